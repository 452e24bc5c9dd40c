# The two commands a fresh machine needs: `make up` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The validator compiled with mypyc (scripts/build_engine.py), rebuilt when its sources change.
ENGINE := shared/fhirschema/.compiled
ENGINE_SRC := $(wildcard shared/fhirschema/validator/*.py shared/fhirschema/fastpath/*.py) \
	shared/fhirschema/slicing.py shared/fhirschema/cli/outcome.py scripts/build_engine.py

.PHONY: up test lint bench install engine bytecode clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	FHIRSCHEMA_COMPILE=0 $(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Without a C compiler the validator still works, as Python (about 3x slower). With one, a build
# that fails is a bug to see, not a silent 3x slowdown: make stops (FHIRSCHEMA_REQUIRE_COMPILED=1
# asks the same of a machine without a compiler; FHIRSCHEMA_REQUIRE_COMPILED=0 waives it).
$(ENGINE): $(STAMP) $(ENGINE_SRC)
	@require="$${FHIRSCHEMA_REQUIRE_COMPILED-}"; \
	if [ -z "$$require" ] && command -v $${CC:-cc} >/dev/null 2>&1; then require=1; fi; \
	if [ "$$require" = 0 ]; then require=; fi; \
	$(PY) scripts/build_engine.py || { test -z "$$require" \
		&& echo "warning: the validator could not be compiled; it runs as Python (about 3x slower)"; }
	touch $(ENGINE)  # also after a failed build: retried when a source changes

# The tree's own modules as bytecode, as pip leaves installed packages (the images): with
# PYTHONDONTWRITEBYTECODE=1 in the environment, every service start compiled them again (the
# gateway's imports: 2760 -> 2410 M instructions, callgrind). Files already current are skipped.
bytecode: $(STAMP)
	$(PY) -m compileall -q shared services

install: $(STAMP) $(ENGINE) bytecode

engine: $(ENGINE)

test: $(STAMP) $(ENGINE) bytecode
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/ruff format --check .

up: $(STAMP) $(ENGINE) bytecode
	$(PY) -m fhirschema_bus.devstack

clean:
	rm -rf $(VENV) .pytest_cache shared/build $(ENGINE) $$(find shared -name "*.so")
