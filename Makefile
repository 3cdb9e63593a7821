# ddvlm: `make demo` (set up + run the main job on the embedded default), `make test` (set up + tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
export DDVLM_HOME ?= $(CURDIR)/.cache/ddvlm

.PHONY: setup demo test msgs assets clean
setup: $(VENV)/.deps msgs assets

$(VENV)/.deps: requirements.txt requirements-ml.txt requirements-ros-pypi.txt requirements-assets.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -r requirements-assets.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

msgs: $(VENV)/.deps
	VENV=$(CURDIR)/$(VENV) scripts/build_msgs.sh
	VENV=$(CURDIR)/$(VENV) scripts/build_msgs.sh third_party/hri_msgs

assets: $(VENV)/.deps
	$(PY) -m ddvlm_core.assets > /dev/null

demo: setup
	$(PY) -m ddvlm_ros.replay data/sample_bag --speed 4 --live \
		--report reports/replay_demo.md --title "make demo: sample bag through the emotion node"

test: setup
	$(PY) -m pytest -q test

clean:
	rm -rf build .cache *.egg-info
