# `make run`: set up and run the main job; `make test`: set up and run the test suite.
PY := .venv/bin/python

.PHONY: setup run test bench
setup:
	bash scripts/setup.sh

run: setup
	$(PY) tools/train.py --algo kdaif --compare supervised

test: setup
	@# pytest exits 5 when it collects no tests: report it instead of failing
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo 'pytest collected no tests'; exit 0; fi; exit $$rc

bench: setup
	$(PY) tools/bench.py
