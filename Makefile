# Front door. `make` builds, `make demo` runs the end-to-end demo, `make test`
# runs every test suite (plain build, ASan+UBSan build, TSan build). Each target first
# installs missing Debian packages through scripts/setup.sh.
BUILD ?= build
ASAN ?= build-asan
TSAN ?= build-tsan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60

.PHONY: all setup build asan tsan test demo fuzz bench clean format

all: build

setup:
	@sh scripts/setup.sh

build: setup
	@[ -f $(BUILD)/build.ninja ] || meson setup $(BUILD) >/dev/null
	@ninja -C $(BUILD)

asan: setup
	@[ -f $(ASAN)/build.ninja ] || meson setup $(ASAN) -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
	@ninja -C $(ASAN)

# ThreadSanitizer with clang (its runtime ships with the clang package).
tsan: setup
	@[ -f $(TSAN)/build.ninja ] || CC=clang meson setup $(TSAN) -Db_sanitize=thread -Db_lundef=false >/dev/null
	@ninja -C $(TSAN)

test: build asan tsan
	@sh scripts/run-tests.sh $(BUILD) $(ASAN) $(TSAN)

demo: build
	@sh scripts/demo.sh $(BUILD)

fuzz: setup
	@[ -f $(FUZZ_BUILD)/build.ninja ] || CC=clang meson setup $(FUZZ_BUILD) -Dfuzzing=true -Db_lundef=false >/dev/null
	@ninja -C $(FUZZ_BUILD)
	@sh scripts/fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

bench: build
	@sh bench/digest.sh $(BUILD)
	@sh bench/server.sh $(BUILD)
	@sh bench/batch.sh $(BUILD)
	@sh bench/azure.sh $(BUILD)
	@sh bench/queue.sh $(BUILD)
	@sh bench/tlog.sh $(BUILD)
	@sh bench/policy.sh $(BUILD)

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(ASAN) $(TSAN) $(FUZZ_BUILD)
