# TwinArm: `make run` serves the app on the bundled demo; `make test` runs every test.
# Both create or refresh .venv from pyproject.toml first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8501
# llama-cpp-python is built for portable x86-64 (AVX2), not -march=native: a native build on a
# CPU with AMX faults in virtual machines that do not allow AMX (see services/generation/llm/embedded.py)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
LLAMA_SPEC := llama-cpp-python[server]>=0.3.36,<0.4

.PHONY: run test test-fast venv browser bench screenshots clean llama-rebuild

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "Installing (the extra local-llm builds llama-cpp-python once: ~7-10 min on 2 cores)..."
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install --quiet -e '.[dev,local-llm]'
	@# a wheel cached from an earlier (native) build may not run here: rebuild it once if so
	@$(BIN)/python -m services.generation.llm.embedded --self-check; rc=$$?; \
	  if [ $$rc = 3 ]; then $(MAKE) --no-print-directory llama-rebuild; elif [ $$rc != 0 ]; then exit $$rc; fi
	@touch $(STAMP)

# Rebuild llama-cpp-python portably (~10 min on 2 cores) and replace the cached wheel.
llama-rebuild:
	@echo "Rebuilding llama-cpp-python for this machine (portable, ~10 min on 2 cores)..."
	$(BIN)/python -m pip cache remove 'llama_cpp_python*' >/dev/null 2>&1 || true
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install --quiet --force-reinstall --no-deps '$(LLAMA_SPEC)'
	$(BIN)/python -m services.generation.llm.embedded --self-check

run: venv
	$(BIN)/streamlit run app.py --server.port $(PORT) --server.address 0.0.0.0

# Debian's Chromium for the end-to-end browser test (Playwright cannot download its own here),
# and an emoji font so the page icons render in screenshots.
browser:
	@test -x /usr/bin/chromium && dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium for the browser test..."; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends chromium fonts-noto-color-emoji >/dev/null; }

test: venv browser
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not e2e and not slow"

bench: venv
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/backtest.py
	$(BIN)/python bench/discrete.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/embedding.py

screenshots: venv browser
	$(BIN)/python scripts/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache artifacts
