# Two commands: `make demo` and `make test`. Both create .venv when it is absent.
# torch is pinned in constraints.txt (2.13.0, the CPU build on the project machines).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.e3traj-installed
DEMO_DIR ?= demo-out

.PHONY: demo test lint artifacts bench clean-demo

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[train,plot,ase,dev]'
	@touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh $(DEMO_DIR)

artifacts: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/artifacts.sh

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean-demo:
	rm -rf $(DEMO_DIR)
