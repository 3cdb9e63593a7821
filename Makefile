# ddvlm: `make demo` (set up + run the main job on the embedded default), `make test` (set up + tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# The PyPI ROS 2 wheels: Kilted (cp311, CI), or Jazzy with PYTHON=python3.12 VENV=.venv-jazzy
# ROS_PYPI=requirements-ros-pypi-jazzy.txt (README, "Which ROS 2")
ROS_PYPI ?= requirements-ros-pypi.txt
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
export DDVLM_HOME ?= $(CURDIR)/.cache/ddvlm

.PHONY: setup demo test test-without-ros msgs assets clean
setup: $(VENV)/.deps msgs assets

$(VENV)/.deps: requirements-ml.txt $(ROS_PYPI) requirements-assets.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "pip>=23.1"  # editable installs of a setup.py project (PEP 660); Python 3.10's venv has 23.0
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements-ml.txt $(if $(ROS_PYPI),-r $(ROS_PYPI))
	$(PIP) install --no-deps -r requirements-assets.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

msgs: $(VENV)/.deps
	VENV=$(CURDIR)/$(VENV) scripts/build_msgs.sh
	VENV=$(CURDIR)/$(VENV) scripts/build_msgs.sh third_party/hri_msgs
	VENV=$(CURDIR)/$(VENV) scripts/build_msgs.sh third_party/whisper_msgs
	VENV=$(CURDIR)/$(VENV) scripts/build_msgs.sh third_party/bond

assets: $(VENV)/.deps
	$(PY) -m ddvlm_core.assets > /dev/null

demo: setup
	$(PY) -m ddvlm_ros.replay data/sample_bag --speed 4 --live \
		--report reports/replay_demo.md --title "make demo: sample bag through the emotion node"

# One pytest-xdist worker per core of CI's 2 (each test runs in one of them, on its own ROS domain: test/conftest.py)
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q test -n $(TEST_WORKERS)

# The tests that need no ROS 2, on a Python that PyPI has no ROS wheels for:
#   make test-without-ros PYTHON=python3.10 VENV=.venv-py310 ROS_PYPI=
test-without-ros: $(VENV)/.deps assets
	$(PY) -m pytest -q test -n $(TEST_WORKERS) --without-ros

clean:
	rm -rf build .cache *.egg-info
