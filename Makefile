# The two commands of the README:  `make run`  and  `make test`.
# Each creates .venv from the requirements files when missing or out of date.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APP_STAMP := $(VENV)/.app-installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: run demo test lint screenshots bench bench-generate bench-train clean-venv

$(APP_STAMP): requirements.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	@touch $@

$(DEV_STAMP): $(APP_STAMP) requirements-dev.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	@touch $@

## Set up and start the app (add ARGS="--demo" to try it on tiny models on a CPU).
run: $(APP_STAMP)
	$(BIN)/python app.py $(ARGS)

demo: $(APP_STAMP)
	$(BIN)/python app.py --demo $(ARGS)

## Set up and run the whole test suite (browser tests need Debian's chromium).
test: $(DEV_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check studio tests app.py benchmarks scripts

## A full-page PNG of each tab of the demo app (OUT=dir, default screenshots/; needs chromium).
OUT ?= screenshots
screenshots: $(DEV_STAMP)
	$(BIN)/python scripts/screenshots.py --out $(OUT)

clean-venv:
	rm -rf $(VENV)

## Training speed/memory at 1024 px for the portrait and low-vram presets (needs a GPU; --tiny on CPU).
bench-train: $(APP_STAMP)
	$(BIN)/python benchmarks/bench_train.py $(ARGS)

## Both benchmarks into one JSON file (a GPU; under 8 minutes): make bench OUT=results.json
OUT ?= bench-results.json
bench: $(APP_STAMP)
	$(BIN)/python benchmarks/bench_all.py --out $(OUT) $(ARGS)
