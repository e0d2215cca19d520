# One-command set-up: every target creates .venv and installs what it needs when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cxrfm-installed
# Every extra the suite exercises: DeepSpeed runs, dense transfer, ONNX export and the browser app.
EXTRAS := train,dev,deepspeed,dense,export,app
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_EVALUATE_OFFLINE := 1
export DS_ACCELERATOR := cpu

.PHONY: install demo test bench clean browser

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP) browser
	$(PY) -m pytest -q -p no:cacheprovider tests

# Headless Chromium for the browser-app test (Debian's package; Playwright's own download is not reachable).
# Installed only when missing and running as root; otherwise that test skips and says why.
browser:
	command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || (apt-get update -qq && apt-get install -y -qq chromium)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info
