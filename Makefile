# Roof Detector: developer / CI entry points.
#
#   make setup   system packages (Debian 12, as root) + .venv with pinned deps
#   make test    the whole test suite, headless
#   make test-fast  the quick tier (tests not marked slow)
#   make lint    ruff check + ruff format --check (settings in ruff.toml)
#   make demo    detection on the embedded real RGB demo crop (no download) -> out/demo
#   make demo-pan  the panchromatic SpaceNet Atlanta sample (downloads the solaris wheel) -> out/demo-pan
#   make train   train the bundled model (needs ../shared/data; see TRAIN_ARGS)
#   make serve   the REST service on 127.0.0.1:8000 (SERVE_ARGS)
#   make clean   remove generated outputs (keeps .venv; `make distclean` drops it)

SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.stamp
TRAIN_STAMP := $(VENV)/.stamp-train

# libgeos-dev, libgdal-dev + python3-dev: shapely and rasterio are built against the system
# GEOS and GDAL (see below). qgis: the desktop and qgis_process(.bin), which the tests run.
APT_PACKAGES := python3-qgis qgis-providers qgis python3-venv xvfb libgeos-dev libgdal-dev python3-dev
# Run apt as root directly, otherwise through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The CPU torch wheel lies on disk here (see requirements.txt).
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

SOLARIS_WHEEL := .cache/solaris/solaris-0.4.0-py3-none-any.whl
# rasterio runs on the system GDAL (osgeo's, QGIS's): a wheel brings its own libgdal in rasterio.libs.
RASTERIO_GDAL_CHECK := import glob, os, sys, rasterio; from osgeo import gdal; own = glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + '.libs', 'libgdal*')); sys.exit(f'rasterio carries its own GDAL ({own[0]}): reinstall it with --no-binary rasterio' if own else 0 if rasterio.__gdal_version__ == gdal.__version__ else f'rasterio uses GDAL {rasterio.__gdal_version__}, QGIS {gdal.__version__}')

# Filled in by the model owner: arguments of `python -m devtools train`.
TRAIN_ARGS ?= --arch efflite0_unet --epochs 120 --samples-per-epoch 480 --batch-size 8 --patience 12 \
              --max-minutes 100 --seed 0 --hue 0.4 --threads 2 --test --out runs/efflite0_hue_scratch
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint demo demo-pan train clean distclean

setup: $(STAMP)

# Idempotent and quick: nothing happens while the stamp is newer than
# requirements.txt. apt-get runs only for packages that are missing.
$(STAMP): requirements.txt Makefile
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages:$$missing"; \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $$missing; \
	fi
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	# shapely is compiled against Debian's GEOS, the one QGIS links: the PyPI wheel carries
	# another GEOS whose symbols clash with QGIS's inside qgis_process and the desktop app (segfault).
	# rasterio is compiled against Debian's GDAL, the one QGIS links: inside QGIS the wheel's calls
	# land on QGIS's GDAL anyway, and a CLI on the wheel's own GDAL decoded JPEG rasters otherwise
	# (the demo: 35 buildings in the CLI, 34 in QGIS). A venv made before this is rebuilt here.
	$(PIP) install $(FIND_LINKS) --no-binary shapely,rasterio -r requirements.txt
	@$(PY) -c "import shapely, sys; from qgis.core import Qgis; g='.'.join(map(str, shapely.geos_version)); sys.exit(0 if Qgis.geosVersion().startswith(g) else f'shapely uses GEOS {g}, QGIS {Qgis.geosVersion()}: reinstall shapely with --no-binary shapely')"
	@$(PY) -c "$(RASTERIO_GDAL_CHECK)" 2>/dev/null || { $(PIP) install $(FIND_LINKS) --force-reinstall --no-deps --no-binary rasterio $$(grep '^rasterio==' requirements.txt) && $(PY) -c "$(RASTERIO_GDAL_CHECK)"; }
	@$(PY) -c "import torch, sys; sys.exit('torch is a CUDA build; expected the CPU wheel' if torch.version.cuda else 0)"
	@$(PY) -c "import qgis.core, osgeo.gdal, rasterio, shapely, pyproj"
	@touch $(STAMP)

test: setup
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q tests $(PYTEST_ARGS)

# The quick tier: everything not marked `slow` (a few seconds each at most).
test-fast: setup
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -m "not slow" tests $(PYTEST_ARGS)

# ruff: lint rules and format settings in ruff.toml.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

$(SOLARIS_WHEEL): | $(STAMP)
	$(PIP) download --no-deps solaris==0.4.0 -d .cache/solaris

demo: setup
	$(PY) -m roof_detector demo --out out/demo

demo-pan: setup $(SOLARIS_WHEEL)
	$(PY) -m roof_detector demo --sample atlanta --out out/demo-pan

$(TRAIN_STAMP): requirements-train.txt $(STAMP)
	$(PIP) install $(FIND_LINKS) -r requirements-train.txt
	@touch $(TRAIN_STAMP)

train: setup $(TRAIN_STAMP)
	$(PY) -m devtools train $(TRAIN_ARGS)

clean:
	rm -rf out .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .cache

# QGIS plugin packaging and review (owner: plugin engineer).
#   make onnx-twin    release step: models/roof_unet.onnx, the int8 ONNX twin of roof_unet.pt (CPU detection
#                     without torch), calibrated on OAM areas 1,2,3,5 and gated on the held-out cases
#                     (needs ../shared/data); `make package` refuses a twin made from another roof_unet.pt
#   make package      dist/roof_detector-<version>.zip for "Install from ZIP"
#   make deploy       the same zip unpacked into the default QGIS profile
#   make screenshots  out/screenshots/{dialog,result_map,report,dependencies,message_bar}.png, headless
.PHONY: package deploy screenshots onnx-twin

OAM := ../shared/data/oam
onnx-twin: setup
	$(PY) -m devtools onnx-twin --precision int8 --calibration-tiles 64 \
	  $(foreach a,1 2 3 5,--calibration $(OAM)/area$(a)/ortho_z19.tif) --heldout ../shared/data

package:
	python3 scripts/package.py

deploy:
	python3 scripts/package.py --deploy

screenshots: setup
	QT_QPA_PLATFORM=offscreen $(PY) scripts/screenshots.py

.PHONY: score
# The bundled model's held-out figures (OAM area 4, INRIA test, demo image): needs ../shared/data.
score: setup $(SOLARIS_WHEEL)
	$(PY) -m devtools score

.PHONY: bench
# Speed and memory figures (human-readable + one JSON line); BENCH_ARGS e.g. --size 20000.
BENCH_ARGS ?=
bench: setup
	$(PY) -m devtools bench $(BENCH_ARGS)

.PHONY: bench-many
# detect vs detect-many (1 worker x 2 threads, 2 workers x 1 thread) on 16 generated tiles, same cores;
# about 8 minutes on a quiet 2-core machine. BENCH_MANY_ARGS e.g. --tile-px 2048 --repeats 5.
BENCH_MANY_ARGS ?=
bench-many: setup
	$(PY) -m devtools bench-many $(BENCH_MANY_ARGS)

.PHONY: serve loadtest
# The REST service (README "REST service"); SERVE_ARGS e.g. --token-file tokens.txt --device cuda.
SERVE_ARGS ?=
serve: setup
	$(PY) -m roof_detector serve $(SERVE_ARGS)

# Bounded load test of the service on loopback: 50 clients x 2 jobs, stops by itself.
LOADTEST_ARGS ?=
loadtest: setup
	$(PY) scripts/load_test.py $(LOADTEST_ARGS)
