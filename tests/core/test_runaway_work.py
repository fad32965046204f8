"""Runaway work is refused before anything is read (issue 21).

Release 0.2.0 started a 2 KB VRT declaring 200,000 x 200,000 px at 10 m and
grew memory until MemoryError (all 24 GB without a cap); 800k-tile runs
started without a word; a model asking for 65536 px tiles or 0.0003 m pixels
was loaded.
"""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from roof_detector.core.errors import Cancelled, LargeRunError, ModelError
from roof_detector.core.model_io import read_metadata
from roof_detector.core.pipeline import DetectOptions, detect_buildings, estimate_detection
from devtools.test_model import make_test_model

from .synthetic_rasters import UTM, UTM_ORIGIN, write_raster

REPO = Path(__file__).resolve().parents[2]


def huge_vrt(tmp_path, size_px, pixel_m):
    """A few-KB VRT declaring ``size_px``² pixels of ``pixel_m`` over one small real GeoTIFF."""
    src = write_raster(
        tmp_path / "small.tif",
        np.full((3, 64, 64), 30, np.uint8),
        UTM,
        Affine(pixel_m, 0, UTM_ORIGIN[0], 0, -pixel_m, UTM_ORIGIN[1]),
    )
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">small.tif'
        f'</SourceFilename><SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" xSize="64" ySize="64"/>'
        f'<DstRect xOff="0" yOff="0" xSize="64" ySize="64"/></SimpleSource></VRTRasterBand>'
        for b in (1, 2, 3)
    )
    vrt = tmp_path / "huge.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="{size_px}" rasterYSize="{size_px}"><SRS>{UTM}</SRS>'
        f"<GeoTransform>{UTM_ORIGIN[0]}, {pixel_m}, 0, {UTM_ORIGIN[1]}, 0, -{pixel_m}</GeoTransform>"
        f"{bands}</VRTDataset>"
    )
    assert vrt.stat().st_size < 4000 and Path(src).exists()
    return str(vrt)


def test_a_vrt_declaring_more_than_the_machine_holds_is_refused_at_once(tmp_path, model_path):
    """Run as the CLI in a child process under a 4 GB address-space cap (prlimit): 0.2.0 hit MemoryError."""
    vrt = huge_vrt(tmp_path, 200_000, 10.0)
    out = tmp_path / "out.gpkg"
    cmd = [
        "prlimit",
        "--as=4000000000",
        sys.executable,
        "-m",
        "roof_detector",
        "detect",
        vrt,
        "-o",
        str(out),
        "--model",
        model_path,
        "--device",
        "cpu",
        "--yes",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "would need about" in proc.stderr and "GB of memory" in proc.stderr and "huge.vrt" in proc.stderr
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr and not out.exists()


def test_a_run_beyond_the_tile_limit_needs_a_confirmation(tmp_path, model, model_path, capsys):
    from roof_detector.cli import main

    vrt = huge_vrt(tmp_path, 20_000, 0.5)  # 120,409 tiles of 64 px, a 1.2 GB run: fits, but long
    estimate = estimate_detection(vrt, DetectOptions(model_path=model_path))
    assert estimate.tiles == 357**2 and estimate.memory_bytes < 2e9
    with pytest.raises(LargeRunError, match="more than 100,000 tiles"):
        detect_buildings(vrt, DetectOptions(), model=model)
    assert main(["detect", vrt, "-o", str(tmp_path / "o.gpkg"), "--model", model_path, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "pass --yes to run it anyway" in err and "127,449 tiles" in err and "Traceback" not in err
    # confirmed: the run starts (and is cancelled at once here)
    with pytest.raises(Cancelled):
        detect_buildings(vrt, DetectOptions(confirm_large_run=True), model=model, is_cancelled=lambda: True)


def test_the_coarse_pixel_warning_comes_before_the_run(tmp_path, model_path, capsys):
    from roof_detector.cli import main

    raster = write_raster(
        tmp_path / "coarse.tif",
        np.full((3, 16, 16), 30, np.uint8),
        UTM,
        Affine(10.0, 0, UTM_ORIGIN[0], 0, -10.0, UTM_ORIGIN[1]),
    )
    assert main(["detect", raster, "-o", str(tmp_path / "o.gpkg"), "--model", model_path, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    warning = err.index("warning: The raster's pixels measure 10.00 m")
    # before the progress bar's first line (tqdm draws it when created; the later descriptions such as
    # "Detecting buildings" are drawn only after its 0.1 s refresh interval, so not at all on a fast run)
    assert err.index("detect: ") < warning < err.index("%|")
    assert err.count("pixels measure 10.00 m") == 1


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("tile_size_px", 65536, "tile_size_px=65536 is beyond"),
        ("gsd_m", 0.0003, "gsd_m=0.0003 m is not a plausible"),
        ("gsd_m", float("inf"), "out of range"),
    ],
)
def test_absurd_model_metadata_is_refused_on_load(tmp_path, key, value, message):
    path = make_test_model(str(tmp_path / "m.pt"))
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    name = next(n for n in entries if n.endswith("extra/metadata.json"))
    meta = json.loads(entries[name])
    meta[key] = value
    entries[name] = json.dumps(meta).encode()
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(bad, "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
    with pytest.raises(ModelError, match=message):
        read_metadata(bad)


def test_the_plan_line_says_how_long_in_plain_words():
    from roof_detector.core.work_estimate import estimate_grid

    small = estimate_grid(495, 246, 256, 32, (0.3, 0.3)).describe()
    assert small.startswith("3 tiles on a 495 x 246 px model grid: under a minute on 2 CPU cores and ")
    big = estimate_grid(20000, 20000, 256, 32, (0.3, 0.3)).describe()
    assert "model grid: about " in big and " min on 2 CPU cores" in big and "about about" not in big
