# The two commands: `make demo` and `make test` (both set up .venv first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
DEMO_ROOT ?= data

.PHONY: setup test demo clean-data

setup: $(STAMP)

# Re-installs only when requirements.txt changes.
$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@touch $@

test: setup
	$(PY) -m pytest -q tests

# Synthetic data, tiles, three models, prediction, vote, hole filling, and a table of scores.
demo: setup
	$(PY) run_pipeline.py --synthetic --data_root $(DEMO_ROOT)

clean-data:
	rm -rf $(DEMO_ROOT)/jingwei_round1_* $(DEMO_ROOT)/train $(DEMO_ROOT)/test $(DEMO_ROOT)/val $(DEMO_ROOT)/plain $(DEMO_ROOT)/model $(DEMO_ROOT)/submit
