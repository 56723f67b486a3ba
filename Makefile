# `make test` and `make demo` set themselves up on a fresh machine: a virtualenv in .venv with
# everything installed (reused on later runs; rebuilt when pyproject.toml changes).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: test demo setup smollm2 clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,gguf,plot]"
	touch $@

test: setup
	$(PY) -m pytest -q

# the embedded-default demo: tiny LLaMA pretrained from scratch, extended 4x by PoSE and by the baselines
demo: setup
	$(PY) demo.py

smollm2: setup
	$(PY) scripts/get_smollm2.py

clean:
	rm -rf $(VENV) cache .pytest_cache
