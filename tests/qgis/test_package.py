"""scripts/package.py: the zip QGIS installs, and the plugin loading from it."""

import importlib.util
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest


@pytest.fixture(scope="module")
def package(repo_root):
    spec = importlib.util.spec_from_file_location("package", repo_root / "scripts" / "package.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_repo(repo_root, tmp_path, model_path):
    """A copy of the repository layout with a bundled model and some clutter to leave out."""
    root = tmp_path / "repo"
    shutil.copytree(repo_root / "roof_detector", root / "roof_detector", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(repo_root / "resources", root / "resources")
    shutil.copy(repo_root / "metadata.txt", root / "metadata.txt")
    (root / "models").mkdir()
    shutil.copy(model_path, root / "models" / "roof_unet.pt")
    (root / "models" / "README.md").write_text("model card")
    (root / "models" / "old_checkpoint.pt").write_bytes(b"x")
    (root / "LICENSE").write_text("GPL")
    (root / "roof_detector" / "__pycache__").mkdir(exist_ok=True)
    (root / "roof_detector" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    (root / "roof_detector" / "tests").mkdir()
    (root / "roof_detector" / "tests" / "test_x.py").write_text("")
    (root / "tests").mkdir()
    (root / "tests" / "test_y.py").write_text("")
    (root / ".venv").mkdir()
    (root / ".venv" / "junk.py").write_text("")
    return root


def test_zip_layout(package, fake_repo, tmp_path):
    zip_path = package.build_zip(fake_repo, tmp_path / "dist")
    assert zip_path.name == f"roof_detector-{package.read_version(fake_repo)}.zip"
    names = zipfile.ZipFile(zip_path).namelist()
    assert all(n.startswith("roof_detector/") for n in names)
    for expected in (
        "roof_detector/__init__.py",
        "roof_detector/plugin.py",
        "roof_detector/metadata.txt",
        "roof_detector/core/pipeline.py",
        "roof_detector/qgis_adapter/task.py",
        "roof_detector/resources/icon.png",
        "roof_detector/models/roof_unet.pt",
        "roof_detector/models/README.md",
        "roof_detector/LICENSE",
    ):
        assert expected in names
    for name in names:
        assert "__pycache__" not in name and not name.endswith(".pyc")
        assert "/tests/" not in name and ".venv" not in name
    assert "roof_detector/models/old_checkpoint.pt" not in names
    assert "roof_detector/resources/make_icon.py" not in names
    again = package.build_zip(fake_repo, tmp_path / "dist2")
    assert again.read_bytes() == zip_path.read_bytes()  # reproducible


#: Developer tools that must never ship in the plugin (they live in devtools/).
DEVELOPER_TOOLS = ("bench", "heldout", "recipe", "synthetic", "test_model", "score", "train")


def test_real_repository_packages_only_what_users_run(package, repo_root, tmp_path):
    zip_path = package.build_zip(repo_root, tmp_path)
    names = zipfile.ZipFile(zip_path).namelist()
    package.check_entries(names)
    assert "roof_detector/resources/icon.png" in names
    modules = {n.rsplit("/", 1)[-1].removesuffix(".py") for n in names if n.endswith(".py")}
    assert not modules & set(DEVELOPER_TOOLS), sorted(modules & set(DEVELOPER_TOOLS))
    assert not any(n.startswith("roof_detector/devtools/") or "/devtools/" in n for n in names)
    top = {n.split("/")[1] for n in names if n.count("/") >= 2}
    # service/: `python -m roof_detector serve`, and the request options the plugin's server client sends
    assert top == {
        "cli",
        "core",
        "models",
        "processing",
        "qgis_adapter",
        "qgis_io",
        "qgis_ui",
        "resources",
        "service",
    }, top
    # every Python module in the zip is one of the package's own (nothing from scripts/, tests/ or devtools/)
    package_files = {
        f"roof_detector/{p.relative_to(repo_root / 'roof_detector').as_posix()}"
        for p in (repo_root / "roof_detector").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert {n for n in names if n.endswith(".py")} == package_files


@pytest.mark.qgis
@pytest.mark.slow
def test_deployed_plugin_loads_and_finds_its_files(package, fake_repo, tmp_path):
    plugins = tmp_path / "plugins"
    target = package.deploy(package.build_zip(fake_repo, tmp_path / "dist"), plugins)
    assert target == plugins / "roof_detector" and (target / "metadata.txt").is_file()
    package.deploy(package.build_zip(fake_repo, tmp_path / "dist"), plugins)  # re-install replaces
    script = textwrap.dedent(f"""
        import sys
        from unittest import mock
        sys.path.insert(0, {str(plugins)!r})
        from qgis.core import QgsApplication
        from qgis.PyQt.QtWidgets import QMainWindow
        app = QgsApplication([], True)
        app.initQgis()
        import roof_detector
        assert roof_detector.__file__.startswith({str(target)!r}), roof_detector.__file__
        from roof_detector.qgis_adapter import paths
        print("MODEL", paths.bundled_model_path())
        print("ICON", paths.resource_path("icon.png"))
        iface = mock.MagicMock()
        iface.mainWindow.return_value = QMainWindow()
        plugin = roof_detector.classFactory(iface)
        plugin.initGui()
        assert not plugin.actions[0].icon().isNull()
        plugin.unload()
        print("OK")
    """)
    env = {
        "QT_QPA_PLATFORM": "offscreen",
        "HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
        "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, cwd=str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"MODEL {target / 'models' / 'roof_unet.pt'}" in proc.stdout
    assert f"ICON {target / 'resources' / 'icon.png'}" in proc.stdout
    assert "OK" in proc.stdout


def test_zip_carries_a_fresh_onnx_twin_and_refuses_a_stale_one(package, fake_repo, tmp_path):
    from devtools.onnx_twin import make_twin

    make_twin(str(fake_repo / "models" / "roof_unet.pt"))
    zip_path = package.build_zip(fake_repo, tmp_path / "dist")
    assert "roof_detector/models/roof_unet.onnx" in zipfile.ZipFile(zip_path).namelist()
    assert package.check_twin(fake_repo).startswith("ONNX twin fp32")
    with open(fake_repo / "models" / "roof_unet.pt", "ab") as f:  # the model changes, the twin does not
        f.write(b"\0")
    with pytest.raises(SystemExit, match="make onnx-twin"):
        package.build_zip(fake_repo, tmp_path / "dist3")


def test_the_repository_twin_was_made_from_the_bundled_model(package, repo_root):
    """models/roof_unet.onnx must be remade (`make onnx-twin`) whenever models/roof_unet.pt changes."""
    if not (repo_root / "models" / "roof_unet.pt").is_file():
        pytest.skip("no bundled model")
    assert package.check_twin(repo_root).startswith("ONNX twin int8")
    from roof_detector.core.model_io import load_model

    from roof_detector.core.onnx_twin import int8_saturation

    model = load_model(repo_root / "models" / "roof_unet.pt", "cpu")
    assert model.extra["backend"] == "onnxruntime"
    # where int8 arithmetic saturates the twin is found and passed over for fp32 (README, ONNX twin)
    assert model.extra["onnx_precision"] == ("fp32" if int8_saturation() else "int8")
    assert "stale" not in model.extra.get("onnx_twin_unused", "")
