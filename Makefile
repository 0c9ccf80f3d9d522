# kerascnn: `make demo` trains on the embedded dataset, `make test` runs the suite.
# Both build .venv first (Python 3.11+, packages from PyPI) and the Debian packages the tests use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests use: headless Chromium checks the serving page; the notebooks and the
# fashion_mnist presets read Fashion-MNIST from Debian's package (no download).
DEBIAN_PACKAGES := chromium dataset-fashion-mnist

.PHONY: setup system demo test notebooks clean

setup: system $(STAMP)

# Installs what is missing of DEBIAN_PACKAGES with apt-get when run as root; otherwise says what to install.
system:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "kerascnn: install the Debian packages $$missing (sudo apt-get install $$missing) for the full test suite"; \
	  fi; \
	fi

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# one OpenCV distribution: mediapipe brings opencv-contrib-python; a headless copy would shadow its cv2
	$(BIN)/python -m pip uninstall --quiet --yes opencv-python-headless
	# MediaPipe Tasks' vision API must import; its sounddevice dependency needs the PortAudio library
	# (Debian libportaudio2) only for audio recording, which kerascnn does not use
	$(BIN)/python -c "import cv2, mediapipe, keras_tuner, fastapi, httptools, uvloop, orjson, grpc, tensorflow_serving.apis, cleanlab, imagehash; from mediapipe.tasks.python import vision"
	touch $(STAMP)

demo: setup
	$(BIN)/kerascnn train --name demo --overwrite

# Two workers, one test file each at a time (module fixtures are built once): most tests keep one core busy.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

notebooks: setup
	$(BIN)/python -m pytest -q tests/test_notebooks.py

clean:
	rm -rf $(VENV) build *.egg-info
