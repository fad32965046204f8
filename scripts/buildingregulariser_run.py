"""Regularise a layer with the ``buildingregulariser`` library, for the comparison in the README.

Runs in a SEPARATE virtual environment (the library needs numpy >= 2 and
geopandas; the plugin's stack is numpy 1.x): ``python -m venv /tmp/brvenv &&
/tmp/brvenv/bin/pip install buildingregulariser==0.2.5``, then

    /tmp/brvenv/bin/python scripts/buildingregulariser_run.py RAW.gpkg OUT.gpkg

RAW.gpkg: a ``detect --no-regularize`` output. The layer is projected to its UTM
zone (the library works in CRS units), regularised with the library's defaults,
and written back in the input CRS. Prints the time per building.
"""

import sys
import time

import geopandas as gpd
from buildingregulariser import regularize_geodataframe


def main(src: str, dst: str) -> None:
    gdf = gpd.read_file(src)
    utm = gdf.estimate_utm_crs()
    t0 = time.process_time()
    out = regularize_geodataframe(gdf.to_crs(utm), num_cores=1)
    seconds = time.process_time() - t0
    out.to_crs(gdf.crs).to_file(dst, driver="GPKG", layer="buildings")
    print(f"{len(gdf)} buildings, {1000 * seconds / max(len(gdf), 1):.3f} ms CPU per building")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
