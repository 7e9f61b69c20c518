# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench clean

# torch==2.13.0 first: that CPU wheel lies on disk; anything looser can pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sjc3d.demo

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

bench: $(STAMP)
	$(PY) benchmarks/render.py
	$(PY) benchmarks/prior.py
	$(PY) benchmarks/oracle_reconstruction.py ../shared/data/meshes/spot.obj ../shared/data/meshes/blub.obj ../shared/data/meshes/fuze.obj

clean:
	rm -rf $(VENV) outputs .pytest_cache
