# Two commands: `make demo` and `make test`. Each sets everything up first (idempotent, quick
# when nothing changed), then runs. The set-up installs exactly requirements/lock.txt.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements/lock.txt

.PHONY: setup data demo test docs bench lock upgrade-check clean

$(STAMP): pyproject.toml $(LOCK) scripts/setup.sh scripts/quiet_pip.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

data: setup
	bash scripts/fetch_data.sh

demo: data
	$(VENV)/bin/simexplain demo

# lint (ruff) and type check (mypy, configured in pyproject.toml) first: either failing fails
test: data
	$(VENV)/bin/ruff check src
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

# The documentation site, offline, into site/ (the tutorials executed so their outputs show);
# `make test` builds it too, strictly, without executing them (tests/test_tutorials.py runs them).
docs: data
	SIMEXPLAIN_DOCS_EXECUTE=true NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	@echo "documentation: site/index.html"

bench: setup
	$(PY) benchmarks/bench_explain.py --threads 1 --repeats 15 --clock cpu --write docs/performance.md
	$(PY) benchmarks/bench_cli.py --write docs/performance.md

# Recompile the lock from pyproject.toml (+ requirements/lock.in); UPGRADE=1 moves every package
# to the newest version pyproject allows.
lock:
	bash scripts/lock.sh

# The test suite in a throwaway venv with the newest versions pyproject allows (not the lock);
# prints what moved against the lock and what broke. Touches neither .venv nor the lock.
upgrade-check: data
	bash scripts/upgrade_check.sh

clean:
	rm -rf $(VENV) data/cache site .cache
