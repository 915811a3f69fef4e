# The two commands of the README:  make demo  and  make test.
# Both set everything up on a fresh Debian machine (see scripts/ensure-system-deps.sh).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup system-deps benchmark addon clean

demo: setup
	$(PY) -m peer demo

test: setup
	@scripts/ensure-system-deps.sh --test
	$(PY) -m pytest $(PYTEST_ARGS)

benchmark: setup
	$(PY) -m benchmarks efficiency

# The Blender extension zip (add-on + peer + wheels for Linux/Windows/macOS, Python 3.11 and 3.13)
# in dist/. See docs/addon.md.
addon: $(STAMP)
	$(PY) scripts/build_addon.py

setup: system-deps $(STAMP)

system-deps:
	@scripts/ensure-system-deps.sh

# addon-test brings bpy 5.0.1 (Blender as a Python module, ~375 MB download) for tests/addon.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,addon-test]'
	@touch $(STAMP)

clean:
	rm -rf $(VENV) demo-output build *.egg-info
