# Two commands make the whole set-up on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_output
# Parallel test workers; the default suite is sized for 2 cores.
TEST_WORKERS ?= 2

.PHONY: venv demo test test-slow bench clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --output_dir $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m 'not slow' tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

# The benchmarks at their documented settings (full-size models on CPU: long; the
# figures in WORKSPACE_NOTES.md come from these commands). Tables go to stdout.
# scripts/bench_layers.py (A/B against a git revision) and scripts/profile_model.py
# (per-component profile) are run by hand with their arguments.
BENCHMARKS := model_stats bench_model bench_train bench_objective bench_evaluator \
	bench_input_pipeline
bench: $(STAMP)
	@for script in $(BENCHMARKS); do \
	  echo "== scripts/$$script.py"; \
	  TF_CPP_MIN_LOG_LEVEL=2 $(PY) scripts/$$script.py || exit 1; \
	done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
