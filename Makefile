# Two entry points: `make demo` (the main job on the embedded default) and `make test` (the test suite).
# Both create .venv and install what they need; everything runs offline on CPU.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

# keep every tool off the network: the switches of medrov/env.py (OFFLINE_ENV, the one list; python -m medrov.env
# prints them, with the system python: the module needs only the standard library), exported to every recipe
$(foreach kv,$(shell PYTHONPATH=$(CURDIR) $(PYTHON) -m medrov.env),$(eval export $(kv)))
ifndef YOLO_OFFLINE
$(error the offline switches of medrov/env.py could not be read with $(PYTHON))
endif

.PHONY: install demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip wheel setuptools

# torch first (from local disk here), then the project; the stamp re-installs when pyproject.toml changes
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc push -q
	@echo "demo done: data/omnis (quarantine.csv lists what was not converted), reports/validate/index.html, reports/dataset/README.md, runs/demo (model), metrics/eval.json + reports/eval/*.png, metrics/promote.json; dvc metrics show for the figures; medrov models for the registry (mlflow.db)"

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# the inner loop: the unit and data tiers only (markers applied by folder in tests/conftest.py), under 3 minutes
test-fast: install
	$(BIN)/python -m pytest -q -m "unit or data" $(PYTEST_ARGS)

# ruff lint and format check (configured in pyproject.toml); .ci/run runs it before the tests
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python bench/convert.py
	$(BIN)/python bench/validate.py
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/orchestration.py

clean:
	rm -rf $(VENV) .pytest_cache .ultralytics

# team servers (infra/README.md): Docker Engine with Compose v2, and infra/.env made from infra/.env.example
.PHONY: infra-up infra-down registry-backup registry-restore
infra-up:
	docker compose -f infra/compose.yaml up -d --build --wait

infra-down:
	docker compose -f infra/compose.yaml down

# the MLflow registry: pg_dump of its database + the artifact bucket, with the MLflow server's environment
# (MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION, MLFLOW_S3_ENDPOINT_URL, AWS_*; infra/README.md, Backups)
PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
registry-backup: BACKUP_DIR ?= backups/registry-$(shell date -u +%Y%m%d-%H%M%S)
registry-backup:
	$(PY) infra/registry_backup.py backup $(BACKUP_DIR)

registry-restore:
	@test -n "$(BACKUP_DIR)" || { echo "registry-restore: set BACKUP_DIR=<folder made by make registry-backup>" >&2; exit 2; }
	$(PY) infra/registry_backup.py restore $(BACKUP_DIR)
