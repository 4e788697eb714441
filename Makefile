# Two commands: `make demo` and `make test`. Each sets everything up first (idempotent, quick
# when nothing changed), then runs.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup data demo test bench clean

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

data: setup
	bash scripts/fetch_data.sh

demo: data
	$(VENV)/bin/simexplain demo

test: data
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_explain.py --threads 1 --repeats 15 --write-readme README.md

clean:
	rm -rf $(VENV) data/cache
