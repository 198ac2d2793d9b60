# The two README commands: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
STAMP  := $(VENV)/.installed
DEVICE ?= pixel8

.PHONY: install demo test bench bench-llm kd-table tiny-lm clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/edgekit build --device $(DEVICE) --force
	@echo
	@echo "Bundle written to build/$(DEVICE). Try:"
	@echo "  $(VENV)/bin/edgekit inspect build/$(DEVICE)"
	@echo "  $(VENV)/bin/python -m edgekit_runner build/$(DEVICE)"

test: install
	bash .ci/prereqs.sh  # sshd, adb, rsync and chromium: the tests drive them for real
	$(VENV)/bin/python -m pytest --durations=15  # the slowest tests, for keeping CI short

bench: install
	$(VENV)/bin/python benchmarks/cli_startup.py
	$(VENV)/bin/python benchmarks/quantization.py
	$(VENV)/bin/python benchmarks/runner_overhead.py
	$(VENV)/bin/python benchmarks/collector.py
	$(VENV)/bin/python benchmarks/embedding.py
	$(VENV)/bin/python benchmarks/embedding_distill.py
	$(VENV)/bin/python benchmarks/build_time.py --devices pixel8 raspberry-pi-5 jetson-orin-nano --quant none int8
	$(VENV)/bin/python benchmarks/qnn.py  # galaxy-s24's NPU path on Qualcomm's HTP emulator (the qnn extra)
	$(VENV)/bin/python benchmarks/emu.py  # the digits bundles on arm64 under QEMU vs x86-64 (edgekit emu; ~16 min the first time)
	$(VENV)/bin/python benchmarks/pruning.py  # structured / unstructured / 2:4, +-KD, fp32 and int8, per format (~30 min)
	$(VENV)/bin/python benchmarks/lm_pruning.py  # the same for examples/tiny_lm (needs `make tiny-lm`; ~30 min)
	$(VENV)/bin/python benchmarks/summary.py  # benchmarks/results/summary.md: the tables above side by side

kd-table: install  # Hinton KD / FitNet / int8 on digits, 3 seeds: benchmarks/results/kd_table.{md,json} (~15 min)
	$(VENV)/bin/python -m benchmarks.kd_table

bench-llm: install  # SmolLM2-135M: edgekit's exports vs torch eager vs llama.cpp (builds llama-cpp-python once, ~15 min)
	$(VENV)/bin/python benchmarks/llm.py

tiny-lm: install  # examples/tiny_lm's teacher and student, trained once and cached (~10 min on 2 cores)
	$(VENV)/bin/python examples/tiny_lm/train.py

clean:
	rm -rf build .pytest_cache
