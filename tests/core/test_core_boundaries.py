"""core/ stays pure: no qgis/PyQt import anywhere in it, and no import cycle between its modules."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "roof_detector" / "core"
FORBIDDEN = ("qgis", "PyQt5", "PyQt6", "PyQt4", "sip")


def _modules():
    for path in sorted(CORE.rglob("*.py")):
        name = ".".join(("roof_detector",) + path.relative_to(CORE.parent).with_suffix("").parts)
        yield name.removesuffix(".__init__"), path, ast.parse(path.read_text(), str(path))


def _imports(module, path, tree):
    """Absolute names of every import in the file, at module level or inside functions."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                yield f"{base}.{node.module}" if node.module else base
                if not node.module:
                    yield from (f"{base}.{a.name}" for a in node.names)
            else:
                yield node.module


def test_core_imports_no_qgis_or_qt_anywhere():
    offenders = [
        (m, name) for m, path, tree in _modules() for name in _imports(m, path, tree) if name.split(".")[0] in FORBIDDEN
    ]
    assert offenders == []


@pytest.mark.slow
def test_importing_all_of_core_loads_no_qgis():
    names = [m for m, _, _ in _modules()]
    code = (
        "import sys, importlib\n"
        f"for n in {names!r}: importlib.import_module(n)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CORE.parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_import_cycle_between_core_modules():
    modules = {m: (path, tree) for m, path, tree in _modules()}
    graph = {
        m: {n for n in _imports(m, *modules[m]) if n in modules and n != m and not n.endswith("core")} for m in modules
    }
    graph = {m: {n for n in deps if not (modules[n][0].name == "__init__.py")} for m, deps in graph.items()}
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_one_resolver_of_the_bundled_model():
    """The engine and the plugin find the bundled model through core.locations (package folder, then parent)."""
    from roof_detector.core import locations
    from roof_detector.core.model_io import BUNDLED_MODEL_PATH

    assert BUNDLED_MODEL_PATH == locations.bundled_model_file()
    sources = {p.name: p.read_text() for p in (CORE.parent / "qgis_adapter").glob("*.py")}
    assert "bundled_model_file()" in sources["paths.py"] and '"roof_unet.pt"' not in sources["paths.py"]


def test_processing_and_the_adapter_import_no_widgets():
    """qgis_ui/ holds widgets only: Processing and the QGIS adapter never need it."""
    offenders = []
    for folder in ("processing", "qgis_adapter", "qgis_io"):
        for path in sorted((CORE.parent / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and "qgis_ui" in node.module:
                    offenders.append(f"{folder}/{path.name}: {node.module}")
    assert offenders == []
