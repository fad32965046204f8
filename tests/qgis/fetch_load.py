"""Many rounds of parallel tile fetches with failing requests, in a process of its own.

``python -m tests.qgis.fetch_load ROUNDS`` prints ``ok ROUNDS rounds`` and
exits 0. A deadlock between the tile workers holds the GIL, so it freezes
the whole process: only a parent with a timeout can see it (see
``test_tile_fetch_threads.py``).
"""

from __future__ import annotations

import os
import sys


def main(rounds: int) -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    import numpy as np

    from roof_detector.qgis_io.workers import RetryPolicy
    from roof_detector.qgis_io.xyz import TileFetcher, XyzTemplate
    from tests.qgis.tile_server import TileServer, cut_tiles

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1024, 1024, 4), dtype=np.uint8)
    image[..., 3] = 255
    tiles = cut_tiles(image, 18, 1 << 17, (1 << 17) - 2)
    server = TileServer(tiles, fail_every=3)  # retries keep requests and decodes overlapping
    retry = RetryPolicy(attempts=12, first_delay_s=0.001, factor=1.5, max_delay_s=0.02)
    for round_ in range(rounds):
        fetcher = TileFetcher(XyzTemplate(f"{server.url}?round={round_}"), None, 4, retry)
        try:
            got = fetcher.fetch(list(tiles))
        finally:
            fetcher.close()
        if len(got) != len(tiles) or any(t is None for t in got.values()):
            print(f"round {round_}: {len(got)} tiles, some empty", flush=True)
            return 1
    server.close()
    print(f"ok {rounds} rounds", flush=True)
    os._exit(0)  # no teardown races with Qt's threads: the answer is printed


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
