# kerascnn: `make demo` trains on the embedded dataset, `make test` runs the suite.
# Both build .venv first (Python 3.11+, packages from PyPI) and need nothing else installed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test notebooks clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# one OpenCV distribution: mediapipe brings opencv-contrib-python; a headless copy would shadow its cv2
	$(BIN)/python -m pip uninstall --quiet --yes opencv-python-headless
	# MediaPipe Tasks' vision API must import; its sounddevice dependency needs the PortAudio library
	# (Debian libportaudio2) only for audio recording, which kerascnn does not use
	$(BIN)/python -c "import cv2, mediapipe, keras_tuner, fastapi, grpc, tensorflow_serving.apis, cleanlab, imagehash; from mediapipe.tasks.python import vision"
	touch $(STAMP)

demo: setup
	$(BIN)/kerascnn train --name demo --overwrite

test: setup
	$(BIN)/python -m pytest -q

notebooks: setup
	$(BIN)/python -m pytest -q tests/test_notebooks.py

clean:
	rm -rf $(VENV) build *.egg-info
