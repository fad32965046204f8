# Roof Detector worker / CLI image (CPU): `python -m roof_detector ...` and `dask scheduler|worker`.
#
#   mkdir -p wheels && cp /opt/wheels/torch-2.13.0+cpu-*.whl wheels/   # the CPU torch wheel (see requirements.txt)
#   docker build -t roof-detector .
#   docker run --rm -p 8786:8786 -p 8787:8787 roof-detector dask scheduler
#   docker run --rm -v /data:/data roof-detector dask worker tcp://SCHEDULER:8786 --nthreads 2
#   docker run --rm -v /data:/data roof-detector python -m roof_detector detect-many /data/tiles \
#       -o /data/buildings.gpkg --scheduler tcp://SCHEDULER:8786
#
# Debian's GDAL Python bindings (as on the developers' machines), everything else pinned in
# requirements.txt; no QGIS: the image runs the engine, not the plugin.
FROM debian:bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-gdal python3-pyproj python3-scipy python3-matplotlib \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt /app/
COPY wheels/ /wheels/
RUN python3 -m venv --system-site-packages /venv \
 && grep -v -E '^(pytest|pytest-qgis|hypothesis)==' requirements.txt > /tmp/req.txt \
 && /venv/bin/pip install --no-cache-dir --find-links /wheels -r /tmp/req.txt
COPY roof_detector /app/roof_detector
COPY models /app/models

# PROJ_DATA: pyproj looks in the venv (sys.prefix) and beside a `proj` binary, finds neither and
# would warn on every process without it (seen running the image).
ENV PATH=/venv/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1 PROJ_DATA=/usr/share/proj
# The local cluster's settings (core/many_cluster.py LOCAL_CLUSTER_CONFIG) for this image's scheduler
# and workers: no 10 ms stack profiler, system counters every 2 s, event loop checked once a second.
ENV DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False \
    DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL=2s \
    DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=1s
CMD ["python", "-m", "roof_detector", "detect-many", "--help"]
