# Two entry points for a fresh machine (see README): `make search` and `make test`.
# Both create ./.venv first (scripts/setup.sh picks the right torch build for the machine).
PY := .venv/bin/python
ARGS ?=

.PHONY: setup search test lint
setup:
	@bash scripts/setup.sh

search: setup
	$(PY) -m harness.search $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

lint: setup
	$(PY) -m ruff check .
