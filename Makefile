# The two set-up commands: `make run` (the main job on the embedded model) and `make test`.
# Each creates .venv and installs what it needs; llama-cpp-python is compiled once, then cached by pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
TARGET ?= 20
OUT ?= runs/latest

.PHONY: install run test lint clean

$(BIN)/selfinstruct: pyproject.toml setup.py actors/method/rouge_kernel.cpp
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,report,cloud]"
	touch $@

install: $(BIN)/selfinstruct

run: install
	$(BIN)/selfinstruct run pipeline.yaml --out $(OUT) --target $(TARGET)

test: install
	$(BIN)/ruff check actors tests benchmarks
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check actors tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
