"""detect-many: inputs, ownership, seamless merge, resume and a worker killed mid-task (real Dask)."""

import os
import signal
import threading
import time

import numpy as np
import pytest
import shapely

from devtools.bench_many_cli import grid_mosaic
from devtools.test_model import make_test_model
from roof_detector.core.detect_many import detect_many
from roof_detector.core.errors import InputRasterError, OutputError
from roof_detector.core.mosaic_plan import expand_inputs, owns, plan_jobs, read_mosaic
from roof_detector.core.pipeline import DetectOptions, detect_buildings
from tests.core.many_fixtures import SEAM_BUILDINGS, cut, read_layer, scene


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_test_model(str(tmp_path_factory.mktemp("model") / "bright.pt"))


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    return scene(str(tmp_path_factory.mktemp("scene") / "whole.tif"))


@pytest.fixture(scope="module")
def reference(whole, model_path):
    """The buildings of the whole raster, by the single-raster engine."""
    return detect_buildings(whole, DetectOptions(model_path=model_path, device="cpu")).buildings


def _options(model_path):
    return DetectOptions(model_path=model_path, device="cpu")


def _check_same_buildings(reference, got):
    """Same count (within 1 %), each reference building matched by one whole output building, no overlaps."""
    geoms = [g for g, _ in got]
    assert abs(len(geoms) - len(reference)) <= 0.01 * len(reference)
    tree = shapely.STRtree(geoms)
    for b in reference:
        hits = [
            geoms[i]
            for i in tree.query(b.geometry, predicate="intersects")
            if geoms[i].intersection(b.geometry).area > 0
        ]
        assert len(hits) == 1, f"building at {b.geometry.centroid} split or duplicated: {len(hits)} pieces"
        iou = hits[0].intersection(b.geometry).area / hits[0].union(b.geometry).area
        assert iou > 0.99
    # no duplicate: no two output buildings overlap
    for i, g in enumerate(geoms):
        assert all(j == i or geoms[j].intersection(g).area < 1e-6 for j in tree.query(g))


def test_expand_inputs(tmp_path, whole):
    tiles = cut(whole, str(tmp_path / "tiles"))
    (tmp_path / "tiles" / "readme.md").write_text("not a raster")
    assert expand_inputs([str(tmp_path / "tiles")]) == sorted(tiles)
    assert expand_inputs([str(tmp_path / "tiles" / "tile_1_*.tif"), tiles[3]]) == sorted(tiles)[2:]
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# my tiles\ntiles/tile_0_0.tif\n\nhttps://example.org/a.tif\ns3://bucket/b.tif\n/vsis3/bucket/c.tif\n"
    )
    assert expand_inputs([str(listing)]) == [
        tiles[0],
        "/vsicurl/https://example.org/a.tif",
        "/vsis3/bucket/b.tif",
        "/vsis3/bucket/c.tif",
    ]
    from osgeo import gdal

    gdal.BuildVRT(str(tmp_path / "set.vrt"), tiles[:2])
    assert expand_inputs([str(tmp_path / "set.vrt")]) == tiles[:2]
    with pytest.raises(InputRasterError, match="matches no file"):
        expand_inputs([str(tmp_path / "nothing_*.tif")])
    with pytest.raises(InputRasterError, match="holds no raster"):
        os.makedirs(tmp_path / "empty")
        expand_inputs([str(tmp_path / "empty")])


def _assert_partition(mosaic, jobs, seed):
    """Every point of the mosaic (random ones, and the jobs' footprint corners) has exactly one owning
    job, and the jobs' areas add up to the mosaic's."""
    x0, y0, x1, y1 = mosaic.bounds
    rng = np.random.default_rng(seed)
    xs = np.concatenate([rng.uniform(x0, x1, 3000), [j.footprint[0] for j in jobs], [j.footprint[2] for j in jobs]])
    ys = np.concatenate([rng.uniform(y0, y1, 3000), [j.footprint[3] for j in jobs], [j.footprint[1] for j in jobs]])
    for x, y in zip(xs, ys):
        if x0 <= x < x1 and y0 < y <= y1:
            assert sum(owns(j, x, y) for j in jobs) == 1, (x, y)
    assert sum(j.area_km2 for j in jobs) == pytest.approx((x1 - x0) * (y1 - y0) / 1e6 / 0.9996**2, rel=1e-3)


def test_owned_areas_partition_the_mosaic(tmp_path, whole):
    """Every point of the mosaic, seams and overlaps included, has exactly one owner."""
    tiles = cut(whole, str(tmp_path / "tiles"), parts=3, overlap_px=7)
    mosaic = read_mosaic(expand_inputs([str(tmp_path / "tiles")]))
    jobs = plan_jobs(mosaic, margin_m=10.0)
    _assert_partition(mosaic, jobs, seed=1)
    assert len(jobs) == len(tiles) == 9


def test_four_abutting_tiles_give_the_whole_rasters_buildings(tmp_path, whole, reference, model_path):
    """The seam buildings come out once and whole; no building is split or duplicated."""
    cut(whole, str(tmp_path / "tiles"))
    out = str(tmp_path / "many.gpkg")
    res = detect_many([str(tmp_path / "tiles")], out, _options(model_path), workers=2, processes=False)
    got = read_layer(out)
    assert res.buildings == len(got) == len(reference) > 40
    _check_same_buildings(reference, got)
    # the planted seam buildings really cross the seams of the 2 x 2 cut
    seam = shapely.box(*shapely.MultiPolygon([g for g, _ in got]).bounds).centroid
    crossing = [
        g
        for g, _ in got
        if g.intersects(shapely.LineString([(seam.x, -1e9), (seam.x, 1e9)]))
        or g.intersects(shapely.LineString([(-1e9, seam.y), (1e9, seam.y)]))
    ]
    assert len(crossing) == len(SEAM_BUILDINGS)
    assert res.cut_at_margin == 0
    assert res.area_km2 == pytest.approx(480 * 480 * 0.25 / 1e6 / 0.9996**2, rel=1e-3)


@pytest.mark.parametrize("pixel_m", [0.33, 0.37])
def test_tiles_of_a_resampled_raster_give_the_whole_rasters_buildings(tmp_path, model_path, pixel_m):
    """Resampled to the model's 0.5 m, every job's model pixels are the whole raster's (one lattice),
    and a seam building traced by two jobs with float-noise differences is kept by one of them."""
    whole_r = scene(str(tmp_path / "whole.tif"), pixel_m)
    reference_r = detect_buildings(whole_r, _options(model_path)).buildings
    cut(whole_r, str(tmp_path / "tiles"))
    out = str(tmp_path / "many.gpkg")
    detect_many([str(tmp_path / "tiles")], out, _options(model_path), workers=1, processes=False)
    got = read_layer(out)
    assert len(got) == len(reference_r) > 40
    _check_same_buildings(reference_r, got)
    whole_area = shapely.union_all([b.geometry for b in reference_r]).area
    assert shapely.union_all([g for g, _ in got]).area == pytest.approx(whole_area, rel=1e-4)


def test_overlapping_tiles_do_not_duplicate(tmp_path, whole, reference, model_path):
    cut(whole, str(tmp_path / "tiles"), overlap_px=12)  # 6 m of overlap, as delivered orthophoto tiles have
    out = str(tmp_path / "many.gpkg")
    detect_many([str(tmp_path / "tiles")], out, _options(model_path), workers=1, processes=False)
    _check_same_buildings(reference, read_layer(out))


def test_uint16_tiles_share_the_mosaics_stretch(tmp_path, whole, model_path):
    """Non-uint8 tiles are stretched once for the mosaic: tiles of a dim uint16 scene match the whole raster."""
    import rasterio

    with rasterio.open(whole) as src:
        data = src.read().astype("float64") * 7 + 1000  # values 1140-2540: only a stretch makes them bright
        # A west-east ramp, so that each tile's own percentiles would differ from the mosaic's.
        data = (data + np.linspace(0, 400, data.shape[2])[None, None, :]).astype("uint16")
        profile = dict(src.profile, dtype="uint16")
    dim = str(tmp_path / "dim.tif")
    with rasterio.open(dim, "w", **profile) as dst:
        dst.write(data)
    cut(dim, str(tmp_path / "tiles"))
    reference = detect_buildings(dim, _options(model_path)).buildings
    out = str(tmp_path / "many.gpkg")
    detect_many([str(tmp_path / "tiles")], out, _options(model_path), processes=False)
    assert len(reference) > 40
    got = read_layer(out)
    _check_same_buildings(reference, got)
    # The jobs get the mosaic's stretch, which is the whole raster's; each tile's own would differ.
    from roof_detector.core.detect_many import _mosaic_stretch
    from roof_detector.core.raster_source import RasterioSource

    shared = _mosaic_stretch(read_mosaic(expand_inputs([str(tmp_path / "tiles")])), str(tmp_path))
    with RasterioSource(dim) as src:
        np.testing.assert_allclose(shared, src.stretch)
    with (
        RasterioSource(str(tmp_path / "tiles" / "tile_0_0.tif")) as a,
        RasterioSource(str(tmp_path / "tiles" / "tile_0_1.tif")) as b,
    ):
        assert not np.allclose(a.stretch, b.stretch)


def test_one_large_raster_in_blocks(tmp_path, whole, reference, model_path):
    """A raster larger than the block size is cut into blocks, one task each, seamless like tiles."""
    out = str(tmp_path / "blocks.gpkg")
    res = detect_many([whole], out, _options(model_path), block_px=256, processes=False)
    assert res.jobs == 4
    _check_same_buildings(reference, read_layer(out))


def test_cancel_keeps_the_finished_tiles_and_resumes(tmp_path, whole, reference, model_path):
    from roof_detector.core.errors import Cancelled

    cut(whole, str(tmp_path / "tiles"), parts=3)
    out = str(tmp_path / "many.gpkg")
    seen = []

    def progress(state):
        seen.append(state.done)
        if len(seen) == 2:  # at the first result; the other jobs finish meanwhile, so the next
            time.sleep(2.0)  # look finds them all done at once: the cancel must still stop the run

    with pytest.raises(Cancelled, match="finished tiles are kept"):
        detect_many(
            [str(tmp_path / "tiles")],
            out,
            _options(model_path),
            processes=False,
            progress=progress,
            is_cancelled=lambda: len(seen) >= 3,
        )
    assert not os.path.exists(out)
    lines = open(f"{out}.parts/manifest.jsonl").read().splitlines()
    assert 2 <= len(lines) - 1 < 9
    res = detect_many([str(tmp_path / "tiles")], out, _options(model_path), processes=False)
    assert res.skipped == len(lines) - 1
    _check_same_buildings(reference, read_layer(out))


@pytest.mark.slow
def test_existing_scheduler(tmp_path, whole, reference, model_path):
    """--scheduler: the run uses a cluster started elsewhere and leaves it running."""
    import logging

    from distributed import LocalCluster

    from roof_detector.core.errors import RoofDetectorError

    cut(whole, str(tmp_path / "tiles"))
    out = str(tmp_path / "many.gpkg")
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0", silence_logs=logging.ERROR
    ) as cluster:
        res = detect_many([str(tmp_path / "tiles")], out, _options(model_path), scheduler=cluster.scheduler_address)
        assert len(cluster.scheduler.workers) == 1  # still there for the next client
    _check_same_buildings(reference, read_layer(out))
    assert res.dashboard
    with pytest.raises(RoofDetectorError, match="Cannot reach the Dask scheduler"):
        detect_many(
            [str(tmp_path / "tiles")], str(tmp_path / "b.gpkg"), _options(model_path), scheduler="tcp://127.0.0.1:9"
        )


def test_margin_too_small_is_reported(tmp_path, whole, model_path):
    cut(whole, str(tmp_path / "tiles"))
    res = detect_many(
        [str(tmp_path / "tiles")], str(tmp_path / "m.gpkg"), _options(model_path), margin_m=3.0, processes=False
    )
    assert res.cut_at_margin > 0
    assert any("--margin-m" in w for w in res.warnings)


def test_abutting_tiles_with_float_noise_share_nothing():
    """307.2 m tiles: 500000 + 3 * 307.2 leaves float slivers that are no overlap (margin 0 read failed on them)."""
    from pyproj import CRS

    from roof_detector.core.mosaic_plan import MosaicInfo, RasterInfo

    size = 307.2
    rasters = [
        RasterInfo(
            f"t{i}{j}",
            (500000 + j * size, 5000000 - (i + 1) * size, 500000 + (j + 1) * size, 5000000 - i * size),
            (0.3, 0.3),
            1024,
            1024,
        )
        for i in range(4)
        for j in range(4)
    ]
    mosaic = MosaicInfo(
        rasters,
        CRS("EPSG:32631").to_wkt(),
        (0.3, 0.3),
        (500000, 5000000 - 4 * size, 500000 + 4 * size, 5000000),
        3,
        "Byte",
    )
    for job in plan_jobs(mosaic, margin_m=0.0):
        assert job.sources == (rasters[job.index].path,) and job.earlier == ()
    assert all(len(j.sources) == 9 for j in plan_jobs(mosaic, margin_m=30.0) if j.inner_edges == (True,) * 4)


def test_a_tile_failing_in_its_job_is_one_line_naming_it(tmp_path, whole, model_path):
    """A tile whose header reads but whose pixels are corrupt (real bytes overwritten in a compressed TIFF)."""
    from osgeo import gdal

    from roof_detector.core.errors import RoofDetectorError

    tiles = cut(whole, str(tmp_path / "raw"))
    os.makedirs(tmp_path / "tiles")
    for t in tiles:
        gdal.Translate(
            str(tmp_path / "tiles" / os.path.basename(t)),
            t,
            creationOptions=["COMPRESS=DEFLATE", "TILED=YES", "BLOCKXSIZE=64", "BLOCKYSIZE=64"],
        )
    bad = tmp_path / "tiles" / "tile_0_1.tif"
    size = bad.stat().st_size
    with open(bad, "r+b") as fh:
        fh.seek(size // 3)
        fh.write(b"\x13" * (size // 3))
    out = str(tmp_path / "many.gpkg")
    # the tile whose job read the damaged file (its own pixels or its margin) is named, then the damaged
    # file as what is damaged, not the job's temporary VRT (gone by then)
    with pytest.raises(
        RoofDetectorError,
        match=r"^tile_\d_\d.tif: tile_0_1.tif( \(read for the margin of tile_\d_\d.tif\))? is damaged or "
        r"incomplete: .*finished tiles are kept",
    ) as err:
        detect_many([str(tmp_path / "tiles")], out, _options(model_path), processes=False)
    text = str(err.value)
    assert "\n" not in text and ".vrt" not in text and "Nothing was written" not in text, text
    assert not os.path.exists(out)


def test_mixed_crs_refused(tmp_path, whole):
    from osgeo import gdal

    tiles = cut(whole, str(tmp_path / "tiles"))
    gdal.Warp(str(tmp_path / "tiles" / "z_merc.tif"), tiles[0], dstSRS="EPSG:3857")
    with pytest.raises(InputRasterError, match="another CRS"):
        read_mosaic(expand_inputs([str(tmp_path / "tiles")]))


def test_other_settings_in_work_dir_refused(tmp_path, whole, model_path):
    cut(whole, str(tmp_path / "tiles"))
    out = str(tmp_path / "many.gpkg")
    work = str(tmp_path / "work")
    detect_many([str(tmp_path / "tiles")], out, _options(model_path), processes=False, work_dir=work, keep_parts=True)
    with pytest.raises(OutputError, match="--restart"):
        detect_many(
            [str(tmp_path / "tiles")],
            str(tmp_path / "b.gpkg"),
            DetectOptions(model_path=model_path, device="cpu", min_area_m2=50),
            processes=False,
            work_dir=work,
        )


@pytest.mark.parametrize(
    "keyword, value, words",
    [
        ("margin_m", -1.0, "Margin must be from 0 to 1000 m"),
        ("margin_m", float("nan"), "Margin must be a finite"),
        ("block_px", 100, "Block size must be from 256"),
        ("group_tiles", 0, "Tiles per job must be from 1 to 16"),
        ("workers", 0, "Workers must be from 1 to 256"),
        ("threads_per_worker", 2.5, "Threads per worker must be a whole number"),
    ],
)
def test_distribution_values_are_checked_by_their_declarations_before_any_work(tmp_path, keyword, value, words):
    from roof_detector.core.params import ParameterError

    # The inputs do not exist: the declared range is refused first, nothing is planned or written.
    with pytest.raises(ParameterError, match=words):
        detect_many(
            [str(tmp_path / "none.tif")], str(tmp_path / "o.gpkg"), DetectOptions(device="cpu"), **{keyword: value}
        )
    with pytest.raises(ParameterError, match="Threshold"):
        detect_many([str(tmp_path / "none.tif")], str(tmp_path / "o.gpkg"), DetectOptions(threshold=1.5))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_worker_killed_mid_task_is_retried_without_hole_or_duplicate(tmp_path, whole, reference, model_path):
    """SIGKILL a worker process while it runs a job: Dask reruns that job on another worker."""
    cut(whole, str(tmp_path / "tiles"), parts=3)
    out = str(tmp_path / "many.gpkg")
    killed = {}

    def executing(dask_worker):
        return os.getpid(), [str(ts.key) for ts in dask_worker.state.executing]

    def killer(client):
        def run():
            deadline = time.time() + 60
            while time.time() < deadline and not killed:
                for address, (pid, keys) in client.run(executing).items():
                    if keys:
                        killed.update(pid=pid, key=keys[0], address=address)
                        os.kill(pid, signal.SIGKILL)
                        return
                time.sleep(0.05)

        threading.Thread(target=run, daemon=True).start()

    res = detect_many(
        [str(tmp_path / "tiles")],
        out,
        _options(model_path),
        workers=2,
        processes=True,
        threads_per_worker=1,
        keep_parts=True,
        on_cluster=killer,
    )
    assert killed, "no job was seen running"
    index = int(killed["key"].split("-")[2])
    from roof_detector.core.many_manifest import Manifest

    entries = [__import__("json").loads(line) for line in open(f"{out}.parts/manifest.jsonl")][1:]
    assert res.stats["group_tiles"] == 2 and res.jobs == 4  # 3 x 3 tiles in blocks of 2 x 2 (auto)
    assert sorted(e["job"] for e in entries) == list(range(res.jobs))  # every job once
    redone = [e for e in entries if e["job"] == index][0]
    assert redone["worker_pid"] != killed["pid"]  # finished by another worker process
    assert killed["pid"] not in res.stats["worker_pids"]
    _check_same_buildings(reference, read_layer(out))
    assert Manifest  # imported for the record format above


def test_blocks_of_tiles_partition_the_mosaic(tmp_path, whole):
    """Blocks of K x K tiles own cells of one grid: every point once, overlapping tiles included."""
    cut(whole, str(tmp_path / "tiles"), parts=3, overlap_px=7)
    mosaic = read_mosaic(expand_inputs([str(tmp_path / "tiles")]))
    jobs = plan_jobs(mosaic, margin_m=10.0, group_tiles=2)
    assert len(jobs) == 4 and all(j.earlier == () for j in jobs)
    _assert_partition(mosaic, jobs, seed=2)
    # the first block reads the 4 tiles under it and those its margin reaches
    assert len(jobs[0].sources) == 9 and jobs[3].window[2] == pytest.approx(mosaic.bounds[2])


def test_blocks_of_tiles_give_the_whole_rasters_buildings(tmp_path, whole, reference, model_path):
    """16 tiles in 4 blocks of 2 x 2, abutting and overlapping: the whole raster's buildings, once each."""
    for overlap in (0, 12):
        folder = str(tmp_path / f"tiles{overlap}")
        cut(whole, folder, parts=4, overlap_px=overlap)
        out = str(tmp_path / f"blocks{overlap}.gpkg")
        res = detect_many([folder], out, _options(model_path), group_tiles=2, processes=False)
        assert (res.jobs, res.stats["group_tiles"], res.cut_at_margin) == (4, 2, 0)
        _check_same_buildings(reference, read_layer(out))


def test_group_size_when_not_told_and_on_resume(tmp_path, whole, model_path):
    """Auto: the largest of 4, 2, 1 leaving 4 jobs and 2 per worker; a resumed run keeps its own."""
    from roof_detector.core.mosaic_plan import auto_group

    assert auto_group(grid_mosaic(2, 1000, 0.25), 30.0, 10000, 1) == 1
    assert auto_group(grid_mosaic(4, 1000, 0.25), 30.0, 10000, 2) == 2
    assert auto_group(grid_mosaic(4, 1000, 0.25), 30.0, 10000, 4) == 1
    assert auto_group(grid_mosaic(10, 1000, 0.25), 30.0, 10000, 2) == 4
    assert auto_group(grid_mosaic(2, 4000, 0.5), 30.0, 10000, 1) == 1  # 8000 px tiles: too large to group
    cut(whole, str(tmp_path / "tiles"))
    out = str(tmp_path / "m.gpkg")
    first = detect_many([str(tmp_path / "tiles")], out, _options(model_path), group_tiles=2, keep_parts=True)
    again = detect_many([str(tmp_path / "tiles")], out, _options(model_path), overwrite=True, processes=False)
    assert (first.jobs, again.jobs, again.skipped, again.stats["group_tiles"]) == (1, 1, 1, 2)


def test_model_tile_counts_of_a_plan(tmp_path, whole, model_path):
    """Tiling maths: the pipeline's own tile count for one raster, and the 1 km tiles' margin cost."""
    from roof_detector.core.model_io import load_model
    import dataclasses

    from roof_detector.core.mosaic_plan import write_job_vrt
    from roof_detector.core.mosaic_tiles import model_tile_count, planned_tiling

    model = load_model(model_path, "cpu")
    grid = {"gsd_m": model.gsd_m, "tile_size_px": model.tile_size_px, "overlap_px": model.overlap_px}
    mosaic = read_mosaic([whole])
    ran = detect_buildings(whole, _options(model_path)).stats["tiles"]
    assert model_tile_count(plan_jobs(mosaic, 0.0), mosaic, grid) == (ran, ran)
    # the tiles a 2 x 2 cut's jobs really run, on the mosaic's tiling (each job's stats)
    tiling = planned_tiling(mosaic, grid)
    quarters = plan_jobs(mosaic, 10.0, block_px=240, tiles=tiling)
    assert len(quarters) == 4
    counted = model_tile_count(quarters, mosaic, grid, tiling)[0]
    on_lattice = dataclasses.replace(_options(model_path), grid_lattice=tiling[0])
    ran_jobs = sum(
        detect_buildings(write_job_vrt(job, str(tmp_path / f"{job.index}.vrt")), on_lattice).stats["tiles"]
        for job in quarters
    )
    assert ran_jobs == counted
    # 10 x 10 tiles of 1 km at 0.25 m, bundled model (0.3 m, 256 px, overlap 32), 30 m margin: the
    # jobs' windows grown to whole tiles of the mosaic's tiling (their own tiling: +15.3 %, +8.2 %, +4.1 %)
    region = grid_mosaic(10, 1000, 0.25)
    on = planned_tiling(region)
    assert model_tile_count(plan_jobs(region, 30.0, tiles=on), region, tiling=on) == (27225, 22201)  # +22.6 %
    assert model_tile_count(plan_jobs(region, 30.0, group_tiles=2, tiles=on), region, tiling=on)[0] == 24336  # +9.6 %
    assert model_tile_count(plan_jobs(region, 30.0, group_tiles=4, tiles=on), region, tiling=on)[0] == 23104  # +4.1 %


def test_worker_model_is_loaded_once_with_the_workers_threads():
    """2 workers x 1 thread on 2 cores must not run 2 x 2 model threads: the session gets the worker's share."""
    import torch

    from roof_detector.core.many_job import worker_model

    before = torch.get_num_threads()
    try:
        model = worker_model(DetectOptions(device="cpu"), 1)  # the bundled model: ONNX Runtime on the CPU
        assert worker_model(DetectOptions(device="cpu"), 1) is model  # loaded once per process
        assert torch.get_num_threads() == 1
        assert model.extra["backend"] == "onnxruntime"  # the shipped int8 twin
        assert model.module.session.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(before)


def _cluster_settings(seen):
    """An on_cluster hook recording the scheduler's tick interval (s), work stealing and system monitor
    interval (ms), and each worker's tick, stack profiler, system monitor and jobs at once."""

    def hook(client):
        seen["scheduler"] = client.run_on_scheduler(
            lambda dask_scheduler: (
                dask_scheduler._tick_interval,
                "stealing" in dask_scheduler.extensions,
                dask_scheduler.periodic_callbacks["monitor"].callback_time,
            )
        )
        seen["workers"] = sorted(
            client.run(
                lambda dask_worker: (
                    dask_worker._tick_interval,
                    "profile" in dask_worker.periodic_callbacks,
                    dask_worker.periodic_callbacks["monitor"].callback_time,
                    dask_worker.state.nthreads,
                )
            ).values()
        )

    return hook


@pytest.mark.slow
def test_a_single_local_worker_runs_in_this_process_and_more_in_their_own(tmp_path, whole, reference, model_path):
    """One local worker is threads of the client's process (no second start and import of the
    engine); its model is freed and torch's threads given back after the run. Two are processes.
    The local cluster checks its event loops once a second (not every 20 ms), steals work only
    when there is another worker to steal from, samples no task stacks and reads its system
    counters every 2 s; each worker runs two jobs at once, which take turns on the network."""
    import torch

    from roof_detector.core import many_job

    cut(whole, str(tmp_path / "tiles"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    seen: dict = {}

    def run(name, workers):
        return detect_many(
            [str(tmp_path / "tiles")],
            str(tmp_path / f"{name}.gpkg"),
            _options(model_path),
            workers=workers,
            on_cluster=_cluster_settings(seen),
        )

    try:
        res = run("one", 1)
        assert res.stats["worker_pids"] == [os.getpid()]
        assert torch.get_num_threads() == 1 and not many_job._MODELS
    finally:
        torch.set_num_threads(before)
    # tick 1 s, no stealing, no stack profiler, system monitor every 2 s, two jobs at once (one on the network)
    assert seen == {"scheduler": (1.0, False, 2000), "workers": [(1.0, False, 2000, 2)]}
    _check_same_buildings(reference, read_layer(str(tmp_path / "one.gpkg")))
    res = run("two", 2)
    assert res.stats["worker_pids"] and os.getpid() not in res.stats["worker_pids"]
    # handed to the worker processes too
    assert seen == {"scheduler": (1.0, True, 2000), "workers": [(1.0, False, 2000, 2)] * 2}
    one, two = (read_layer(str(tmp_path / f"{n}.gpkg")) for n in ("one", "two"))
    assert [(g.wkb, a) for g, a in two] == [(g.wkb, a) for g, a in one]  # the same output either way


def test_an_owned_building_reaching_the_band_a_whole_run_keeps_from_another_tile_is_counted():
    """Session 14: a 59 m roof across a seam of OAM area 4 at 0.52 m reached 1 m short of its job's
    window and came out a little different from the whole run's (IoU 0.985) without a warning: only
    buildings within 1.5 pixels of a cut edge were counted. The last half overlap of pixels along a
    cut edge is kept from another tile than in a whole run; a building reaching into it is counted."""
    from devtools.bench_many_cli import grid_mosaic
    from roof_detector.core.building import Building
    from roof_detector.core.many_job import keep_owned

    mosaic = grid_mosaic(1, 600 * 0.5, 0.5)
    job = plan_jobs(mosaic, margin_m=30.0, block_px=300)[0]
    assert job.inner_edges[2]  # its right side is cut from the mosaic
    fx0, fy0, fx1, fy1 = job.footprint
    x1 = job.window[2]
    # owned (its middle is in the footprint), ending 3 m (6 px) short of the window's right edge
    roof = Building(shapely.box(2 * fx1 - x1 - 10.0, fy0 + 10.0, x1 - 3.0, fy0 + 16.0), 0.0, 0.0, 0.9)
    kept, _, cut_plain = keep_owned(job, [roof])
    assert kept == [roof] and cut_plain == 0
    assert keep_owned(job, [roof], edge_band=8 / 2 * 0.5)[2] == 0  # 2 m (the test model's): not reached
    assert keep_owned(job, [roof], edge_band=32 / 2 * 0.3)[2] == 1  # 4.8 m (the bundled model's)
    # the band run_job passes: half the model's tile overlap, in lattice pixels
    from types import SimpleNamespace

    from roof_detector.core.many_job import _edge_band_crs
    from roof_detector.core.tiling import GridLattice

    options = SimpleNamespace(grid_lattice=GridLattice(500000.0, 5000000.0, 0.3, 0.3))
    assert _edge_band_crs(job, options, SimpleNamespace(overlap_px=32)) == pytest.approx(4.8)


def test_a_seam_candidate_the_neighbour_owns_is_not_counted_where_it_reaches_the_window_edge():
    """Session 10's false warning (the demo crop in 683 px blocks, every outline exact): a 30 m roof
    owned by the neighbour, 2.6 m from the seam, reached this job's window edge. The merge settles
    it from the neighbour's whole outline, so it is no sign of a small margin; one this job owns is."""
    from devtools.bench_many_cli import grid_mosaic
    from roof_detector.core.building import Building
    from roof_detector.core.many_job import keep_owned

    mosaic = grid_mosaic(1, 600 * 0.5, 0.5)
    job = plan_jobs(mosaic, margin_m=30.0, block_px=300)[1]  # the right-hand block: its left side is cut
    assert job.inner_edges[0]
    wx0, fx0 = job.window[0], job.footprint[0]
    y = job.footprint[1] + 50.0
    theirs = Building(shapely.box(wx0 + 0.1, y, fx0 - 2.6, y + 20.0), 0.0, 0.0, 0.9)  # left of the seam
    mine = Building(shapely.box(wx0 + 0.1, y + 30.0, fx0 + 40.0, y + 40.0), 0.0, 0.0, 0.9)  # middle past it
    assert keep_owned(job, [], [theirs])[2] == 0
    assert keep_owned(job, [], [mine])[2] == 1
