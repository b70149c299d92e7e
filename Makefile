# fuseface: `make demo` and `make test` each set themselves up from nothing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fuseface-installed

.PHONY: setup test demo lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)
	@touch $(STAMP)

## make test: lint, then the whole test suite (about 10-15 minutes on 2 CPU cores)
test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/fuseface models fetch mtcnn --quiet
	$(VENV)/bin/fuseface models fetch dlib-resnet --quiet
	$(PY) -m pytest -q

## make demo: synthetic faces -> train a small MSConv backbone -> verification report under runs/demo/
demo: setup
	$(VENV)/bin/fuseface demo --out runs/demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

bench: setup
	for script in benchmarks/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache build src/*.egg-info
