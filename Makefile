# Two commands: `make demo` and `make test`. Each sets up its own .venv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# One stamp per set of extras: `make demo` needs only the notebook extras.
DEMO_STAMP := $(VENV)/.installed-notebooks
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint bench bytecode clean

$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[notebooks]'
	touch $(DEMO_STAMP)

$(TEST_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,notebooks]'
	touch $(DEMO_STAMP) $(TEST_STAMP)

# Our package's bytecode, as pip writes it for an installed wheel: an editable install gets
# none where PYTHONDONTWRITEBYTECODE is set (as on CI machines), and then every process of a
# kernel's start (kernel, local service, sandbox agent, kernel bridge) compiles the package
# again: 0.25-0.3 s of CPU each. Python checks each file's bytecode against its source.
bytecode: $(DEMO_STAMP)
	$(PY) -m compileall -q e2b_kernel

demo: $(DEMO_STAMP) bytecode
	$(PY) -m e2b_kernel.cli.demo notebooks/quickstart.ipynb

lint: $(TEST_STAMP) bytecode
	$(PY) -m ruff check e2b_kernel tests bench examples
	$(PY) -m ruff format --check e2b_kernel tests bench examples
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -n 2 --durations=25 tests --ignore=tests/notebooks
	# Alone, so that its "no sandbox left" check sees only the sandboxes of its own nbval run.
	$(PY) -m pytest tests/notebooks

bench: $(TEST_STAMP) bytecode
	$(PY) bench/local_service.py
	$(PY) bench/kernel.py

clean:
	rm -rf $(VENV) build dist *.egg-info
