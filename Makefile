# Portrait Studio: `make run` launches the studio, `make test` runs the offline test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines take the 2.13.0 CPU wheel from a local find-links; on a GPU machine PyPI's
# build of the same version is a CUDA one. Override, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,mesh,dlib
# Their declared pins (numpy<2, protobuf<5, non-headless OpenCV) clash with this stack although
# they run with it: installed without dependencies, their real run-time needs come from EXTRAS.
NODEPS_SPECS ?= mediapipe==0.10.21 insightface==2.1 controlnet-aux==0.0.10
STAMP := $(VENV)/.installed

.PHONY: install run browser test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml constraints.txt Makefile | $(PY)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install --quiet -c constraints.txt -c $(VENV)/torch-constraint.txt -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --no-deps $(NODEPS_SPECS)
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(PY) app.py

# The browser test drives Debian's chromium; without it (not root, no apt) that test is skipped.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || echo "chromium unavailable: the browser test will be skipped"

test: $(STAMP) browser
	$(PY) -m ruff check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/bench_faces.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
