"""The ONNX twin: made from the model file, checked, used without torch, refused when stale."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from roof_detector.core.errors import ModelError
from roof_detector.core.model_io import load_model, read_metadata
from devtools.onnx_twin import make_twin
from roof_detector.core import onnx_twin
from roof_detector.core.onnx_twin import find_twin, read_twin_metadata, read_twin_properties
from devtools.test_model import make_test_model

pytest.importorskip("onnxruntime")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Makes torch unimportable (as in a QGIS whose Python has no torch), then runs the code given.
NO_TORCH_PRELUDE = textwrap.dedent("""
    import importlib.abc, sys
    class _NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("No module named 'torch' (blocked by the test)")
            return None
    sys.meta_path.insert(0, _NoTorch())
""")


def run_without_torch(code: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH_PRELUDE + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture()
def model_with_twin(tmp_path):
    path = make_test_model(str(tmp_path / "bright.pt"))
    figures = make_twin(path)
    return path, figures


def test_twin_carries_the_same_metadata_and_the_source_hash(model_with_twin):
    path, figures = model_with_twin
    twin = path[:-3] + ".onnx"
    assert figures["path"] == twin and figures["max_abs_diff"] <= 1e-3
    assert read_twin_metadata(twin) == read_metadata(path)
    props = read_twin_properties(twin)
    assert props["precision"] == "fp32" and json.loads(props["agreement"])["mask_agreement"] == 1.0
    assert find_twin(path, read_metadata(path)) == (twin, "")


def test_cpu_model_loads_from_the_twin(model_with_twin):
    path, _ = model_with_twin
    m = load_model(path, "cpu")
    assert m.extra["backend"] == "onnxruntime" and m.extra["onnx_path"].endswith("bright.onnx")
    x = np.zeros((2, 3, 64, 64), np.float32)
    x[:, :, :16] = 0.9
    y = m.module.run_numpy(x)
    assert y.shape == (2, 1, 64, 64) and y[:, 0, :16].min() > 0.99 and y[:, 0, 16:].max() < 0.01


def test_a_stale_twin_is_not_used(model_with_twin, tmp_path, monkeypatch):
    path, _ = model_with_twin
    monkeypatch.setenv("ROOF_DETECTOR_CACHE", str(tmp_path / "cache"))
    make_test_model(path, threshold=0.6)  # the model file changes; its twin does not
    twin, why = find_twin(path, read_metadata(path))
    assert twin is None and "stale" in why
    m = load_model(path, "cpu")  # torch is here: TorchScript runs instead, saying why
    assert m.extra["backend"] == "torch" and "stale" in m.extra["onnx_twin_unused"]


def test_a_corrupt_twin_is_reported_not_fatal(model_with_twin):
    path, _ = model_with_twin
    with open(path[:-3] + ".onnx", "wb") as f:
        f.write(b"not an onnx file")
    twin, why = find_twin(path, read_metadata(path))
    assert twin is None and "cannot be read" in why


def test_an_onnx_file_can_be_named_as_the_model(model_with_twin):
    path, _ = model_with_twin
    m = load_model(path[:-3] + ".onnx")
    assert m.extra["backend"] == "onnxruntime" and m.threshold == 0.5
    with pytest.raises(ModelError, match="CPU only"):
        load_model(path[:-3] + ".onnx", device="cuda")


def test_cpu_detection_imports_no_torch(model_with_twin, tmp_path):
    """The whole detection (load, tile, infer, polygonise, GeoPackage) with torch unimportable."""
    from tests.core.synthetic_rasters import NORTH_UP, write_raster

    path, _ = model_with_twin
    img = np.full((3, 200, 200), 30, np.uint8)
    img[:, 40:80, 50:110] = 220
    raster = write_raster(str(tmp_path / "scene.tif"), img, "EPSG:32631", NORTH_UP)
    out = tmp_path / "out.gpkg"
    proc = run_without_torch(
        f"""
        import sys
        from roof_detector.core.gpkg_writer import write_buildings
        from roof_detector.core.pipeline import DetectOptions, detect_buildings
        res = detect_buildings({raster!r}, DetectOptions(model_path={path!r}, min_area_m2=1.0))
        write_buildings(res.buildings, {str(out)!r}, res.crs_wkt, overwrite=True)
        assert "torch" not in sys.modules, "torch was imported"
        print("BUILDINGS", len(res.buildings), round(res.total_area_m2, 1), res.stats["backend"])
    """,
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BUILDINGS")][0].split()
    assert line[1] == "1" and abs(float(line[2]) - 600.0) < 30 and line[3] == "onnxruntime"
    assert out.is_file()


def test_without_torch_a_model_without_twin_says_what_to_install(tmp_path):
    path = make_test_model(str(tmp_path / "lone.pt"))
    proc = run_without_torch(
        f"""
        from roof_detector.core.errors import ModelError
        from roof_detector.core.model_io import load_model
        try:
            load_model({path!r})
        except ModelError as exc:
            print("MSG", exc)
    """,
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no lone.onnx beside the model file" in proc.stdout and "install torch" in proc.stdout


def test_loading_a_torchscript_model_logs_no_deprecation_warning(tmp_path):
    """torch 2.x warns that TorchScript is deprecated on every load; a detection must not repeat it."""
    import warnings

    path = make_test_model(str(tmp_path / "m.pt"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model(path, "cpu", backend="torch")
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message) for w in caught]


def test_the_release_command_is_a_developer_tool(tmp_path, capsys):
    """`python -m devtools onnx-twin` writes the twin beside the model; --if-stale then leaves it alone.
    The plugin's own CLI has no such command (the twin is made at release time, not by users)."""
    from devtools.__main__ import COMMANDS
    from roof_detector.cli import COMMANDS as PLUGIN_COMMANDS
    from roof_detector.cli import main

    assert "onnx-twin" not in PLUGIN_COMMANDS
    path = make_test_model(str(tmp_path / "bright.pt"))
    assert main(["onnx-twin", "--model", path], prog="python -m devtools", commands=COMMANDS) == 0
    twin = path[:-3] + ".onnx"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["path"] == twin
    assert find_twin(path, read_metadata(path)) == (twin, "")
    assert main(["onnx-twin", "--model", path, "--if-stale"], prog="python -m devtools", commands=COMMANDS) == 0
    assert "is up to date" in capsys.readouterr().out


@pytest.mark.skipif(
    bool(onnx_twin.int8_saturation()),
    reason="int8 twins are made on CPUs whose int8 arithmetic is exact (the refusal elsewhere is tested below)",
)
@pytest.mark.parametrize("gate_passes", [False, True])
def test_a_refused_int8_twin_keeps_the_twin_it_was_to_replace(tmp_path, monkeypatch, gate_passes):
    """`make onnx-twin` once deleted models/roof_unet.onnx when the held-out gate refused the new twin
    (session 13): the candidate is now made beside it and takes its place only after passing."""
    from affine import Affine

    import devtools.onnx_twin_cli as cli
    from roof_detector.cli import main
    from roof_detector.core.errors import RoofDetectorError
    from roof_detector.core.onnx_twin import file_sha256
    from tests.core.synthetic_rasters import UTM, UTM_ORIGIN, write_raster

    model = make_test_model(str(tmp_path / "m.pt"))
    twin = make_twin(model)["path"]
    before = file_sha256(twin)
    data = np.random.default_rng(0).integers(0, 255, (3, 256, 256), dtype=np.uint8)
    raster = write_raster(tmp_path / "cal.tif", data, UTM, Affine(0.5, 0, UTM_ORIGIN[0], 0, -0.5, UTM_ORIGIN[1]))
    seen = []

    def gate(model_path, int8_path, data_dir):  # the real gate's contract: delete and raise, or record
        seen.append(int8_path)
        assert os.path.exists(int8_path) and int8_path != twin
        if gate_passes:
            return {}
        os.unlink(int8_path)
        raise RoofDetectorError("int8 loses more than 0.005 pixel IoU ... (stand-in for the scores)")

    monkeypatch.setattr(cli, "heldout_gate", gate)
    argv = ["onnx-twin", "--model", model, "--precision", "int8", "--calibration", raster, "--heldout", "data"]
    status = main(argv, prog="python -m devtools", commands={"onnx-twin": "devtools.onnx_twin_cli"})
    assert seen and status == (0 if gate_passes else 2)
    assert sorted(os.listdir(tmp_path)) == ["cal.tif", "m.onnx", "m.pt"]  # no candidate left behind
    props = read_twin_properties(twin)
    if gate_passes:
        assert props["precision"] == "int8" and file_sha256(twin) != before
        # what its calibration saw: the very tiles onnx-twin samples (seeded), and the readers
        from devtools.onnx_twin import calibration_record

        tiles = cli.sample_tiles([raster], read_metadata(model), 64)
        assert json.loads(props["calibration"]) == calibration_record([tiles])
    else:
        assert props["precision"] == "fp32" and file_sha256(twin) == before


def test_int8_twins_are_not_made_where_int8_arithmetic_saturates(tmp_path, monkeypatch, capsys):
    """The twin's check and held-out gate would measure arithmetic no CPU that runs the twin does."""
    from roof_detector.cli import main

    model = make_test_model(str(tmp_path / "m.pt"))
    twin = make_twin(model)["path"]
    before = open(twin, "rb").read()
    monkeypatch.setitem(onnx_twin._SATURATION, "why", "ONNX Runtime's int8 arithmetic saturates on this CPU (test)")
    argv = ["onnx-twin", "--model", model, "--precision", "int8", "--calibration", "x.tif"]
    assert main(argv, prog="python -m devtools", commands={"onnx-twin": "devtools.onnx_twin_cli"}) == 2
    assert "make and check int8 twins on a CPU with VNNI" in capsys.readouterr().err
    assert open(twin, "rb").read() == before
