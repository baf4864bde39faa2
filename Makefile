# Two entry points a new machine needs, each doing its own set-up:
#   make demo   install into .venv, then run the whole job on the built-in demo
#   make test   install into .venv (with the test extras), then run the test suite
PYTHON ?= python3
VENV ?= .venv
# torch first and pinned, so pip never resolves the bare requirement to a multi-GB CUDA
# build. Override for another platform, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/python -m pip

.PHONY: demo test install clean

demo: $(VENV)/.installed-demo
	$(VENV)/bin/shardtools demo --workdir demo-run

test: $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest -q

install: $(VENV)/.installed-demo

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_SPEC)
	touch $@

# setup.py and the C source too: an edited extension must be rebuilt, not kept stale.
$(VENV)/.installed-demo: pyproject.toml setup.py loaders/_cropdecode.c $(VENV)/.torch
	$(PIP) install -q -e ".[viz]"
	touch $@

$(VENV)/.installed-test: pyproject.toml setup.py loaders/_cropdecode.c $(VENV)/.torch
	$(PIP) install -q -e ".[test,viz,interop]"
	touch $@

clean:
	rm -rf $(VENV) demo-run
