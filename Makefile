# The README's two commands: `make test` and `make demo`; `make lint`,
# `make wheel-check` and `make docs` are what .ci/run adds (`make format-check`
# once the formatter has been applied to the tree).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# pyproject.toml states ranges; the pins live here because this machine kind
# serves exactly these wheels from local disk (an unpinned torch would try to
# download several GB).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test demo install clean planner-demo wheel-check docs lint format-check

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# --no-compile: no bytecode for every module of every package up front (about 28 s
	# of a fresh install here); the tests write it for the modules they import (below).
	$(PY) -m pip install -q --no-compile $(TORCH_PINS)
	$(PY) -m pip install -q --no-compile -e '.[test]'
	touch $@

# The tools of lint, format-check, wheel-check and docs (the `dev` extra: `test` plus
# build, twine, mkdocs, ruff, mypy), which `make test` does not need (about 20 s to install).
$(VENV)/.dev-installed: $(VENV)/.installed
	$(PY) -m pip install -q --no-compile -e '.[dev]'
	touch $@

install: $(VENV)/.dev-installed

# PYTHONDONTWRITEBYTECODE is unset for the tests: with it set (as on this machine
# kind), every process a test starts would compile torch, mombs and the tests from source.
# TEST_WORKERS pytest-xdist processes share the tests (2: this machine kind's cores;
# 233 s serial against 151 s with two, measured here); TEST_WORKERS=0 runs them in one.
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -n $(TEST_WORKERS)

# Ruff's rules and mypy on the library core and the integrations, as configured
# in pyproject.toml ([tool.ruff], [tool.mypy]). Seconds with mypy's cache; a
# first run (CI's) reads torch's types once.
lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Whether `ruff format` would change any file ([tool.ruff.format]); changes nothing.
format-check: $(VENV)/.dev-installed
	$(VENV)/bin/ruff format --check .

# Builds the wheel and the sdist (twine check), installs the wheel into a new
# virtual environment in a temporary folder and runs `mombs --help`,
# `python -m mombs --help` and a one-epoch digits run from outside the checkout.
wheel-check: $(VENV)/.dev-installed
	MOMBS_WHEEL_CHECK=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_packaging.py -k "wheel or sdist"

# The documentation site (mkdocs.yml) in site/, strict: a broken link or a
# missing API reference fails. Offline: nothing is fetched.
docs: $(VENV)/.dev-installed
	$(VENV)/bin/mkdocs build --strict --clean --site-dir site

FMNIST_DIR ?= /usr/share/datasets/fashion-mnist

# Fashion-MNIST comes from Debian's package when it can be installed; otherwise
# the demo says so and falls back to scikit-learn's digits, which always work.
demo: $(VENV)/.installed
	@if ! $(PY) -c "import sys; from mombs.recipes.classification.fashion_mnist import find_fashion_mnist; sys.exit(find_fashion_mnist() is None)"; then \
	  echo "Fashion-MNIST not found; trying: apt-get install -y dataset-fashion-mnist"; \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null 2>&1 || true; \
	fi
	@if $(PY) -c "import sys; from mombs.recipes.classification.fashion_mnist import find_fashion_mnist; sys.exit(find_fashion_mnist() is None)"; then \
	  $(PY) -m mombs.cli compare --config configs/demo.yaml; \
	else \
	  echo "Fashion-MNIST is not available here: falling back to scikit-learn's digits (long-tailed, 120 images in the largest class)."; \
	  $(PY) -m mombs.cli compare --config configs/demo.yaml --set dataset=digits --set img_max=120 --set imbalance=0.1 --out runs/demo-digits; \
	fi

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache .hypothesis

planner-demo: $(VENV)/.installed
	$(PY) benchmarks/planner.py --demo
