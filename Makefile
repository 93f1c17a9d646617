# Developer entry points. CI runs `make test` through .ci/run.
#
# The virtualenv is created on first use; the editable install is redone only when pyproject.toml or
# constraints.txt is newer than the stamp file. pyproject.toml declares version ranges; constraints.txt
# fixes the releases installed here (torch 2.14.1, torchvision 0.29.1, ...). The torch and torchvision
# wheels resolve from local disk through pip's own configuration, so nothing here names an index.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.vidtok-install.stamp

.DEFAULT_GOAL := test
.PHONY: test lint demo install clean distclean

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(PY) scripts/demo.py

install: $(STAMP)

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

# Build and cache droppings; keeps the virtualenv (see distclean).
clean:
	rm -rf build dist .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o \
		\( -name '__pycache__' -o -name '*.egg-info' \) -type d -prune -exec rm -rf {} +

# Everything clean removes, plus the virtualenv and its install stamp.
distclean: clean
	rm -rf $(VENV)
