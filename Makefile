# `make test` and `make demo` are all the set-up a fresh machine needs.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch / torchvision come first so that pip takes the builds pinned on this kind of machine
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q --durations=25 tests

demo: $(STAMP)
	$(PY) -m pipelines.demo --config configs/demo.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/loader.py
	$(PY) bench/train.py
	$(PY) bench/scale.py

clean:
	rm -rf $(VENV) demo_output mlflow.db mlruns runs sweeps
