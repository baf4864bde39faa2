# Two entry points a new machine needs, each doing its own set-up:
#   make demo   install into .venv, then run the whole job on the built-in demo
#   make test   install into .venv (with test extras), then run the test suite
PYTHON ?= python3
VENV ?= .venv
# torch first and pinned, so pip never resolves the bare requirement to a multi-GB CUDA
# build. Override for another platform, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

demo: $(STAMP)
	$(VENV)/bin/shardtools demo --workdir demo-run

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install -q -e ".[test,viz]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) demo-run
