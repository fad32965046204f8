"""Modules and functions stay short enough to read at once (issue 20).

Walks ``roof_detector/`` and ``devtools/`` with :mod:`ast`: a module may hold at most
:data:`MAX_MODULE_LINES` lines, a function (or method) at most :data:`MAX_FUNCTION_LINES`
lines of body, its docstring not counted.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("roof_detector", "devtools")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

#: Files not held to the limits yet, each with why. Paths relative to the repository root.
ALLOWED: set = set()


def body_lines(function: ast.AST) -> int:
    """Lines from the first statement of ``function``'s body to its last, the docstring left out."""
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            body = body[1:]
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def size_problems(path: Path, name: str) -> list:
    """One line per limit ``path`` breaks (``name`` is how the line names the file)."""
    source = path.read_text(encoding="utf-8")
    problems = []
    n_lines = len(source.splitlines())
    if n_lines > MAX_MODULE_LINES:
        problems.append(f"{name}: {n_lines} lines (at most {MAX_MODULE_LINES}): split it by what it holds")
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = body_lines(node)
            if n > MAX_FUNCTION_LINES:
                problems.append(
                    f"{name}:{node.lineno} {node.name}: {n} body lines (at most {MAX_FUNCTION_LINES}): "
                    "split it into named steps"
                )
    return problems


def _sources():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_the_walk_finds_the_packages():
    names = {p.relative_to(ROOT).as_posix() for p in _sources()}
    assert "roof_detector/core/pipeline.py" in names and "devtools/bench.py" in names
    assert ALLOWED <= names, "an allowance names a file that is gone: remove it"


def test_modules_and_functions_are_short():
    problems = []
    for path in _sources():
        name = path.relative_to(ROOT).as_posix()
        if name not in ALLOWED:
            problems += size_problems(path, name)
    assert problems == [], "\n".join(problems)


def _function(n_lines: int, docstring: bool = True) -> str:
    doc = '    """A docstring\n    over two lines."""\n' if docstring else ""
    return "def f(x):\n" + doc + "".join(f"    x = x + {i}\n" for i in range(n_lines))


@pytest.mark.parametrize("n_lines, broken", [(MAX_FUNCTION_LINES, False), (MAX_FUNCTION_LINES + 1, True)])
def test_a_function_one_line_too_long_is_found(tmp_path, n_lines, broken):
    path = tmp_path / "m.py"
    path.write_text(_function(n_lines))
    problems = size_problems(path, "m.py")
    assert bool(problems) is broken
    if broken:
        assert problems == [f"m.py:1 f: {n_lines} body lines (at most 60): split it into named steps"]


def test_a_method_and_a_nested_function_are_measured_too(tmp_path):
    inner = "\n".join("    " + line for line in _function(MAX_FUNCTION_LINES + 5, docstring=False).splitlines())
    path = tmp_path / "m.py"
    path.write_text(f"class C:\n{inner}\n")
    assert [p.split(":")[1] for p in size_problems(path, "m.py")] == ["2 f"]


def test_a_module_one_line_too_long_is_found(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("x = 1\n" * MAX_MODULE_LINES)
    assert size_problems(path, "m.py") == []
    path.write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    assert size_problems(path, "m.py") == [
        f"m.py: {MAX_MODULE_LINES + 1} lines (at most 500): split it by what it holds"
    ]
