# The two commands of the README:
#   make run    set up, then train the seed model on Fashion-MNIST, recorded in MLflow
#   make test   set up, then run the test suite
VENV ?= .venv
BIN := $(VENV)/bin
# extra Hydra overrides for `make run`, e.g. make run ARGS="net=cnn trainer.max_epochs=3"
ARGS ?=

.PHONY: setup run test lint format ui

setup:
	./scripts/setup.sh

run: setup
	$(BIN)/deepmine train $(ARGS)

# two stages, both always run: the suite, then the tests on real clusters (SLURM, Ray, Optuna
# on PostgreSQL: tests marked `cluster`), one module per worker so each starts its cluster once
test:
	./scripts/setup.sh --test-tools
	$(BIN)/python -m pytest -n 2 --dist worksteal --durations=15 -m "not cluster"
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=15 -m cluster

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

format:
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

ui:
	$(BIN)/deepmine ui
