# Two commands on a fresh Debian machine with Python >= 3.11 and make:
#   make demo   run the station on its simulator
#   make test   lint + every test (tests/ and hil_tests/)
# Both create .venv and install what is missing (Python packages pinned by
# constraints.txt, Debian packages through apt-get when absent).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Debian packages the tests need: dciodvfy/dcentvfy (dicom3tools), dcmcjpeg and dcmconv (dcmtk:
# test images in transfer syntaxes written by another encoder than pydicom), a headless
# browser for the UI test, and Orthanc as the PACS the station sends to.
DEB_PACKAGES := dicom3tools dcmtk chromium chromium-driver orthanc
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint format bench debs venv clean hil

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv && \
	  $(PYTHON) -m venv $(VENV); }

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,bench]'
	touch $@

debs:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP) debs lint
	$(VENV)/bin/pytest --hypothesis-profile=ci -p no:cacheprovider tests hil_tests

hil: $(STAMP)
	$(VENV)/bin/pytest --hypothesis-profile=ci hil_tests $(if $(PORT),--port $(PORT),)

demo: $(STAMP) debs
	$(VENV)/bin/rsa-station demo

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
