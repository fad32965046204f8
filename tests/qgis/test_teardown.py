"""The Processing tests in one process end with pytest's own status, not a segfault at exit.

Once, after the whole of test_processing.py, the process died with status 139 in
Py_FinalizeEx: a raster layer owned by Python, kept alive by the frames QGIS 3.22's
bindings leak with a failed algorithm's exception, was destroyed by PyQt after
QgsApplication.exitQgis() (QgsRasterPipe's destructor). The suite then worked around
it with os._exit; no more.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_processing_tests_exit_cleanly(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/qgis/test_processing.py"],
        cwd=str(REPO),
        env=dict(os.environ, QT_QPA_PLATFORM="offscreen"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert " passed" in proc.stdout
