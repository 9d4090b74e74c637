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

test:
	./scripts/setup.sh --test-tools
	$(BIN)/python -m pytest -n 2 --dist worksteal --durations=15

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

format:
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

ui:
	$(BIN)/deepmine ui
