# Front door of the project. On a fresh Debian machine `make demo` and `make test` install what
# they lack, build, fetch the default model and run.
BUILD        ?= build
BUILD_ASAN   ?= build-asan
JOBS         ?= $(shell nproc)
SQUAT_MODELS ?= $(HOME)/.cache/squat/models
# make test's model (fast) and the head_dim-128 model of make demo and make test-large.
MODEL        ?= $(SQUAT_MODELS)/SmolLM2-135M-Instruct.Q4_1.gguf
LARGE_MODEL  ?= $(SQUAT_MODELS)/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf
DEMO_MODEL   ?= $(LARGE_MODEL)
export SQUAT_MODELS

DEB_PACKAGES = cmake ninja-build g++ clang ccache pkg-config libgtest-dev libgmock-dev libbenchmark-dev \
  libhwy-dev libeigen3-dev libcli11-dev nlohmann-json3-dev libfmt-dev libpcre2-dev \
  libcpp-httplib-dev python3-pip python3-venv python3-matplotlib

CMAKE_FLAGS = -G Ninja -DCMAKE_BUILD_TYPE=Release -DSQUAT_WERROR=ON -DSQUAT_TEST_MODEL=$(MODEL) \
  -DSQUAT_LARGE_TEST_MODEL=$(LARGE_MODEL)

.PHONY: all deps build model model-large demo test test-release test-large test-sanitize bench fuzz format clean

all: build

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(BUILD)/build.ninja: | deps
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

model:
	@scripts/fetch-model smollm2-135m >/dev/null

model-large:
	@scripts/fetch-model qwen2.5-coder-1.5b >/dev/null

# The seed example on Qwen2.5-Coder-1.5B (head_dim 128, as in the SQuat reference): GSM8K 5-shot
# prompt, SQuat 2-bit keys and values, greedy; prints the answer ("#### 35" is right), then the
# cache's size beside fp16's and the speed. Another model: make demo DEMO_MODEL=path.gguf
demo: build $(if $(filter $(LARGE_MODEL),$(DEMO_MODEL)),model-large)
	@scripts/gsm8k-demo-prompt > $(BUILD)/demo-prompt.txt
	@echo "squat run: $(notdir $(DEMO_MODEL)), GSM8K 5-shot, --kv squat --k-bits 2 --v-bits 2, greedy"
	@echo "Question: John takes care of 10 dogs. Each dog takes .5 hours a day to walk and take care of their business. How many hours a week does he spend taking care of dogs?"
	@printf "Answer:"
	@$(BUILD)/squat run -m $(DEMO_MODEL) -f $(BUILD)/demo-prompt.txt --no-display-prompt \
	  --kv squat --k-bits 2 --v-bits 2 --temp 0 -n 160 --stop "Question:"

test: test-release test-sanitize test-python

test-release: build model
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -LE large

# Tests that need the 1.5B model (label `large`): the demo's answer, SQuat-2 beside f16 at
# head_dim 128. Reconfigures so a build made before records the large model's path.
test-large: deps model-large
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)
	cd $(BUILD) && ctest --output-on-failure -L large

# Unit tests again under AddressSanitizer and UndefinedBehaviorSanitizer (the heavy end-to-end
# tests run only in the release build above). Warnings stay on but are not errors here: GCC 12
# reports false positives in sanitizer-instrumented std::regex code; the release build keeps
# -Werror.
test-sanitize: deps model
	cmake -S . -B $(BUILD_ASAN) $(CMAKE_FLAGS) -DSQUAT_SANITIZE=ON -DSQUAT_BENCH=OFF -DSQUAT_WERROR=OFF
	cmake --build $(BUILD_ASAN) -j $(JOBS)
	# Labels as a regex: the large-model tests carry only the label "large" (gtest_discover_tests
	# keeps the first of "large;slow"), and under ASan they would run for hours once
	# `make test-large` or `make demo` has fetched Qwen2.5-Coder-1.5B.
	cd $(BUILD_ASAN) && ctest --output-on-failure -j $(JOBS) -LE 'slow|large'

# The Python package (python/, pyproject.toml) and its pytest suite. Everything goes into a
# virtual environment outside the repository ($(PY_VENV)), so the system Python is untouched and
# the pinned test requirements (torch from PyPI brings about 3 GB of CUDA libraries, once) are
# installed only when python/requirements-test.txt changed. `pip install .` builds the extension
# in build-py/ (incrementally; CCACHE_BASEDIR lets ccache reuse objects across checkouts).
PYTHON  ?= python3
PY_VENV ?= $(HOME)/.cache/squat/pyvenv
PY_REQS  = python/requirements-test.txt
.PHONY: python-env python test-python

python-env: deps
	@[ -x $(PY_VENV)/bin/python ] || $(PYTHON) -m venv $(PY_VENV)
	@cmp -s $(PY_REQS) $(PY_VENV)/requirements-test.txt || { \
	  echo "python-env: installing $(PY_REQS) into $(PY_VENV)"; \
	  $(PY_VENV)/bin/pip install -q --disable-pip-version-check -r $(PY_REQS) && \
	  cp $(PY_REQS) $(PY_VENV)/requirements-test.txt; }

python: python-env
	CCACHE_BASEDIR=$(CURDIR) $(PY_VENV)/bin/pip install -q --disable-pip-version-check \
	  --no-build-isolation --no-deps --config-settings=cmake.define.SQUAT_WERROR=ON .

test-python: python build model
	SQUAT_TEST_MODEL=$(MODEL) SQUAT_CLI=$(CURDIR)/$(BUILD)/squat $(PY_VENV)/bin/python -m pytest -q python/tests

bench: build
	@for b in $(BUILD)/bench/bench_*; do $$b; done

# libFuzzer's runtime comes in libclang-rt-<clang major>-dev (only recommended by clang on Debian).
fuzz: deps
	@rt=libclang-rt-$$(clang++ -dumpversion | cut -d. -f1)-dev; \
	if ! dpkg -s $$rt >/dev/null 2>&1; then \
	  echo "fuzz: installing $$rt"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$rt; \
	fi
	cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DSQUAT_FUZZ=ON -DSQUAT_TESTS=OFF -DSQUAT_BENCH=OFF
	cmake --build build-fuzz -j $(JOBS) --target fuzz_gguf
	mkdir -p build-fuzz/corpus
	build-fuzz/fuzz/fuzz_gguf build-fuzz/corpus tests/fixtures/gguf -max_total_time=$${FUZZ_SECONDS:-60} -max_len=65536

format:
	clang-format -i $$(git ls-files '*.h' '*.cpp' '*.cu')

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) build-fuzz build-py
