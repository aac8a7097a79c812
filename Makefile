# The README's two commands: `make test` and `make demo`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# pyproject.toml states ranges; the pins live here because this machine kind
# serves exactly these wheels from local disk (an unpinned torch would try to
# download several GB).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test demo install clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

demo: $(VENV)/.installed
	$(PY) benchmarks/planner.py --demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
