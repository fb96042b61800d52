# Two commands do all the set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench clean

# Debian packages the project runs: espeak-ng (speech synthesis for the training corpus), and
# chromium and firefox-esr (the browsers of the page's tests; Playwright's download cannot
# work here: it drives Debian's chromium, and Firefox is driven over WebDriver BiDi).
SYSTEM_PACKAGES := espeak-ng libespeak-ng1 chromium firefox-esr

$(STAMP): pyproject.toml Makefile
	@dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES); }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch lies on these machines as a file; any other spec pulls CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# mediapipe 0.10.14 bundles the face-mesh model; its jax and opencv-contrib
	# dependencies are not needed at run time (pyproject lists what it imports).
	$(BIN)/pip install -q --no-deps mediapipe==0.10.14
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# The live server: open http://127.0.0.1:8080/ and press "Start microphone".
demo: $(STAMP)
	$(BIN)/dreamtalk serve --host 127.0.0.1 --port 8080

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/dreamtalk bench render

clean:
	rm -rf $(VENV) out .pytest_cache
