#!/usr/bin/env python3
"""Run the Roof Detector Processing algorithms headless, like ``qgis_process`` (QGIS 3.22).

    .venv/bin/python scripts/roofdetector_process.py list
    .venv/bin/python scripts/roofdetector_process.py help roofdetector:detectbuildings
    .venv/bin/python scripts/roofdetector_process.py [--json] run roofdetector:detectbuildings -- \\
        INPUT=ortho.tif OUTPUT=buildings.gpkg [KEY=VALUE ...]

Same command syntax as ``qgis_process`` (values as strings, a key given twice
makes a list, ``--KEY=VALUE`` works too). It starts a QgsApplication without
a GUI, initialises Processing, registers the provider the way ``qgis_process``
does (``classFactory(None).initProcessing()``) and calls ``processing.run``.

Why a script as well as ``qgis_process``: it runs in the project's Python
(``.venv``), where QGIS's libraries are loaded privately, so the pip wheels
of shapely/rasterio (with their own GEOS/GDAL) work as they do in the tests.
Inside ``qgis_process`` QGIS's GEOS is loaded first and the shapely wheel
crashes; see the README section "Processing and qgis_process".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

REPO_ROOT = Path(__file__).resolve().parents[1]
PROCESSING_PLUGINS = ("/usr/share/qgis/python/plugins", "/usr/lib/qgis/python/plugins")


def parse_parameters(items: List[str]) -> Dict[str, Any]:
    """``KEY=VALUE`` / ``--KEY=VALUE`` strings -> dict; a repeated key gives a list."""
    params: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.lstrip("-").partition("=")
        if not sep or not key:
            raise SystemExit(f"error: parameter {item!r} is not KEY=VALUE")
        if key in params:
            previous = params[key]
            params[key] = (previous if isinstance(previous, list) else [previous]) + [value]
        else:
            params[key] = value
    return params


def start_qgis():
    """A headless QgsApplication with Processing and the Roof Detector provider."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    for folder in PROCESSING_PLUGINS:
        if os.path.isdir(folder) and folder not in sys.path:
            sys.path.append(folder)
    from processing.core.Processing import Processing

    Processing.initialize()
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import roof_detector

    plugin = roof_detector.classFactory(None)
    plugin.initProcessing()
    return app, plugin


def make_feedback(quiet: bool):
    from qgis.core import QgsProcessingFeedback

    class Feedback(QgsProcessingFeedback):
        """Log lines and a coarse progress bar on stderr (stdout keeps the results)."""

        def __init__(self):
            super().__init__()
            self.step = -1

        def setProgressText(self, text):  # noqa: N802 - QGIS API
            self.pushInfo(text)

        def pushInfo(self, info):  # noqa: N802
            if not quiet:
                print(info, file=sys.stderr, flush=True)

        def pushWarning(self, warning):  # noqa: N802
            print(f"warning: {warning}", file=sys.stderr, flush=True)

        def reportError(self, error, fatalError=False):  # noqa: N802, N803
            self.errors.append(error)
            print(f"error: {error}", file=sys.stderr, flush=True)

    feedback = Feedback()
    feedback.errors = []

    def on_progress(value: float) -> None:
        step = int(value // 10)
        if step != feedback.step and not quiet:
            feedback.step = step
            print(f"{step * 10}%", file=sys.stderr, flush=True)

    feedback.progressChanged.connect(on_progress)
    return feedback


def plain(value: Any) -> Any:
    """Processing results as JSON-friendly values (layers become their source)."""
    if hasattr(value, "source") and callable(value.source):
        return value.source()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no log or progress on stderr")
    parser.add_argument("command", choices=("list", "help", "run"))
    parser.add_argument("algorithm", nargs="?", help="algorithm id, e.g. roofdetector:detectbuildings")
    parser.add_argument("parameters", nargs=argparse.REMAINDER, help="-- KEY=VALUE ... (run)")
    args = parser.parse_args(argv)
    if args.command in ("help", "run") and not args.algorithm:
        parser.error(f"{args.command} needs an algorithm id")
    app, plugin = start_qgis()
    try:
        from qgis.core import QgsApplication, QgsProcessingException

        registry = QgsApplication.processingRegistry()
        if args.command == "list":
            for alg in sorted(registry.algorithms(), key=lambda a: a.id()):
                if alg.provider() is not None and alg.provider().id() == "roofdetector":
                    print(f"{alg.id()}\t{alg.displayName()}")
            return 0
        alg = registry.algorithmById(args.algorithm)
        if alg is None:
            print(f"error: no algorithm {args.algorithm!r}", file=sys.stderr)
            return 2
        if args.command == "help":
            import processing

            processing.algorithmHelp(args.algorithm)
            return 0
        import processing

        items = [p for p in args.parameters if p != "--"]
        feedback = make_feedback(args.quiet)
        try:
            results = processing.run(args.algorithm, parse_parameters(items), feedback=feedback)
        except QgsProcessingException as exc:
            if str(exc) not in feedback.errors:  # not already shown by the feedback
                print(f"error: {exc}", file=sys.stderr)
            return 1
        results = {k: plain(v) for k, v in sorted(results.items()) if k != "CHILD_RESULTS"}
        if args.json:
            print(json.dumps(results, sort_keys=True))
        else:
            for key, value in results.items():
                print(f"{key}:\t{value}")
        return 0
    finally:
        plugin.unload()
        app.exitQgis()


if __name__ == "__main__":
    sys.exit(main())
