"""The real ``qgis_process`` runs our algorithms and exits cleanly (skipped where it is absent).

The pytest process once segfaulted at exit after the Processing tests (a layer kept
alive by the frames QGIS's bindings leak with a failed algorithm's exception, then
destroyed after exitQgis); qgis_process must exit 0 after a run, and with its own
failure status, never a signal, after a failed one.
"""

import pytest

from tests.qgis.test_qgis_process_deps import QGIS_PROCESS, qgis_process_runner

pytestmark = [
    pytest.mark.skipif(not __import__("os").path.exists(QGIS_PROCESS), reason="qgis_process is not installed"),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def qgis_process(tmp_path_factory, repo_root):
    return qgis_process_runner(tmp_path_factory.mktemp("qgis_process_runs"), repo_root)


def test_detect_and_solar_exit_0(qgis_process, ortho_path, model_path, tmp_path):
    out = tmp_path / "b.gpkg"
    proc = qgis_process(
        "run", "roofdetector:detectbuildings", "--", f"INPUT={ortho_path}", f"MODEL={model_path}", f"OUTPUT={out}"
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-1500:], proc.stderr[-1500:])
    assert "BUILDINGS:\t4" in proc.stdout and out.exists()
    proc = qgis_process("run", "roofdetector:rooftopsolar", "--", f"INPUT={out}", f"OUTPUT={tmp_path / 's.gpkg'}")
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-1500:], proc.stderr[-1500:])


def test_a_failed_run_exits_with_a_status_not_a_signal(qgis_process, ortho_path, tmp_path):
    bad = tmp_path / "not_a_model.pt"
    bad.write_text("nope")
    proc = qgis_process(
        "run",
        "roofdetector:detectbuildings",
        "--",
        f"INPUT={ortho_path}",
        f"MODEL={bad}",
        f"OUTPUT={tmp_path / 'b.gpkg'}",
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-1500:])  # qgis_process: failed algorithm
    assert "not_a_model.pt" in proc.stdout + proc.stderr and "Traceback" not in proc.stdout + proc.stderr


def test_many_with_worker_processes_starts_them_from_qgis_python_not_the_first_on_path(
    tmp_path_factory, repo_root, model_path, tmp_path
):
    """Embedded in qgis_process, ``sys.executable`` is the first ``python3`` on PATH (a pyenv shim
    on a QA machine: the workers failed to start). Here that is a script that is no Python."""
    import os

    from tests.core.many_fixtures import cut, scene

    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "python3").write_text("#!/bin/sh\necho 'not the Python QGIS runs' >&2\nexit 3\n")
    os.chmod(shim / "python3", 0o755)
    run = qgis_process_runner(tmp_path_factory.mktemp("qgis_process_shim"), repo_root, path_first=str(shim))
    cut(scene(str(tmp_path / "whole.tif")), str(tmp_path / "tiles"))
    out = tmp_path / "many.gpkg"
    proc = run(
        "run",
        "roofdetector:detectbuildingsmany",
        "--",
        f"MORE_INPUTS={tmp_path / 'tiles'}",
        f"MODEL={model_path}",
        "WORKERS=2",
        f"OUTPUT={out}",
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-1500:], proc.stderr[-1500:])
    assert out.exists() and "not the Python QGIS runs" not in proc.stderr
