# Two commands do everything on a fresh machine (both idempotent):
#   make compare   install what is needed, then run the main job (valleys compare)
#   make test      install what is needed, then lint, build the docs and run the whole test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.valleys-installed
# A CPU wheel of this torch lies on the project's machines; elsewhere pip fetches it. Users with
# their own (CUDA) torch keep it: the package only asks for torch>=2.4.
TORCH ?= torch==2.13.0

.PHONY: setup compare test lint docs services
setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install_data.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[test,docs]"
	PYTHON=$(PY) bash scripts/install_data.sh
	touch $@

compare: setup
	$(VENV)/bin/valleys compare

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The documentation site (mkdocs.yml) into build/site; --strict turns every warning (a broken
# link, a docstring griffe cannot parse) into a failure. NO_MKDOCS_2_WARNING: Material's banner.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# PostgreSQL serves the study tests' multi-worker case (started by the tests on 127.0.0.1).
services:
	bash scripts/install_test_services.sh

# One thread per worker: two workers with two threads each thrash the two cores of CI. VALLEYS_TORCH:
# the packaging test installs the same torch into its fresh venv.
test: lint docs services
	OMP_NUM_THREADS=1 VALLEYS_TORCH="$(TORCH)" $(PY) -m pytest -n 2
