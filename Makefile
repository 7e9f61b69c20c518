# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all test-faults test-browser bench prior clean

# torch==2.13.0 first: that CPU wheel lies on disk; anything looser can pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sjc3d.demo

# The learned prior `make demo` uses (assets/zero123-toy), trained again from a fixed seed: procedural
# views (rendered once into outputs/prior/data/), then the autoencoder and the diffusion model.
prior: $(STAMP)
	$(PY) -m sjc3d train-prior toy --out outputs/prior/toy-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

# The end-to-end fault tests (about a minute): signals to child fits, a filling disk (a small
# tmpfs when run as root), two fits on one folder, a Ray worker killed mid-trial.
test-faults: $(STAMP)
	$(PY) -m pytest -q -m faults tests/test_faults.py

# `sjc3d app` in headless Chromium: Debian's chromium (Playwright cannot fetch its own browser
# here), the app and browser extras, then the app's tests with Gradio and the browser tests.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: $(STAMP)
	command -v chromium >/dev/null || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)
	$(PY) -m pip install --quiet -e '.[test,app,browser]'
	$(PY) -m pytest -q tests/test_app.py
	$(PY) -m pytest -q -m browser tests/browser

bench: $(STAMP)
	$(PY) benchmarks/render.py
	$(PY) benchmarks/prior.py
	$(PY) benchmarks/prior_step.py
	$(PY) benchmarks/oracle_reconstruction.py ../shared/data/meshes/spot.obj ../shared/data/meshes/blub.obj ../shared/data/meshes/fuze.obj
	$(PY) benchmarks/oracle_reconstruction.py assets/toy.obj --out outputs/bench/export
	$(PY) benchmarks/export_quality.py outputs/bench/export/toy --truth assets/toy.obj

clean:
	rm -rf $(VENV) outputs .pytest_cache
