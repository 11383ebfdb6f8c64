# Two commands for a fresh machine:
#   make demo   set up .venv and run the quick-start sweep (depth comparison,
#               Parquet results and a report with figures under results/quickstart)
#   make test   set up .venv (with the dev extra) and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= results/quickstart

.PHONY: demo test venv bench clean

$(VENV)/.installed-%: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$*]"
	touch $@

demo: $(VENV)/.installed-plot
	$(VENV)/bin/dmfjax sweep --spec quickstart --out $(OUT) --report

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) results .pytest_cache
