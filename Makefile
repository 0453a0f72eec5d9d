# diskgraph developer commands. `make demo` and `make test` work on a fresh machine:
# they install the package (editable) with the pinned CPU torch from constraints.txt.
PY ?= python3
PIP = $(PY) -m pip
DEMO ?= demo-data
PYTEST_ARGS ?=

.PHONY: install install-gpu wheels gpu-check demo test test-slow bench-import clean

install:
	$(PIP) install -q -e ".[test,pyg,tensorboard]" -c constraints.txt

# GPU machines (docs/gpu.md): keep the CUDA torch that is there. Installs the checkout with --no-deps, then only
# the declared dependencies that are missing, with torch/numpy/numba pinned to their installed versions; from
# the wheels in .whl/ without an index when that folder holds wheels (no network needed: see `make wheels`).
GPU_EXTRAS ?=
install-gpu:
	$(PY) tools/bench/gpu_check.py install . --wheels .whl --extras "$(GPU_EXTRAS)"

# Run on a machine with network: the wheels a GPU machine lacks (zarr and what it needs, xxhash, setuptools for
# the editable build), for WHEEL_PY / manylinux x86_64, into .whl/ (gitignored). numpy is left out (every
# torch machine has it; an offline install must not replace it).
WHEEL_PY ?= 3.12
ZARR_VERSION ?= $(shell $(PY) -c 'import zarr; print(zarr.__version__)' 2>/dev/null || echo 3.1.6)
WHEEL_REQS ?= "zarr==$(ZARR_VERSION)" "xxhash>=3.0" "tqdm>=4.60" "setuptools>=68" wheel
WHEEL_DROP ?= numpy
wheels:
	mkdir -p .whl
	$(PIP) download -q --python-version $(WHEEL_PY) --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux_2_28_x86_64 --only-binary=:all: -d .whl $(WHEEL_REQS)
	for p in $(WHEEL_DROP); do rm -f .whl/$$p-*.whl; done
	ls -l .whl

# the GPU check of docs/gpu.md (≤ 8 min on one H100/H200); DEVICE=cpu runs it small on this machine
gpu-check:
	bash tools/bench/gpu_check.sh

# generate raw inputs → import → sample → pack → inspect and verify → train; then the same for Cora.
demo: install
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(PY) -m diskgraph generate --format raw --nodes 200000 --edges 4000000 --feature-dim 64 --classes 8 --seed 0 --out $(DEMO)/raw
	$(PY) -m diskgraph preprocess import --edges $(DEMO)/raw/edges.npy --features $(DEMO)/raw/features.npy \
		--labels $(DEMO)/raw/labels.npy --split random:0.6,0.2,0.2 --dedup --drop-self-loops \
		--memory-budget 256M --out $(DEMO)/synthetic
	$(PY) -m diskgraph preprocess sample $(DEMO)/synthetic --fanouts 10,5 --batch-size 1024 --seed 0
	$(PY) -m diskgraph preprocess pack $(DEMO)/synthetic --host-cache 8M --gpu-cache 2M --memory-budget 256M
	$(PY) -m diskgraph inspect $(DEMO)/synthetic --verify
	$(PY) -m diskgraph train $(DEMO)/synthetic --model sage --hidden 128 --epochs 3 --seed 0 --log-json $(DEMO)/synthetic.jsonl
	@if [ -f ../shared/datasets/cora/data.npz ]; then \
		$(PY) -m diskgraph preprocess all --npz ../shared/datasets/cora/data.npz --out $(DEMO)/cora \
			--fanouts 10,5 --batch-size 512 --seed 0 --host-cache 1M && \
		$(PY) -m diskgraph inspect $(DEMO)/cora --verify && \
		$(PY) -m diskgraph train $(DEMO)/cora --model sage --hidden 256 --epochs 20 --seed 0 --log-json $(DEMO)/cora.jsonl; \
	fi

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# heavier checks marked `slow` (pytest exits 5 when none are collected)
test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

bench-import: install
	$(PY) tools/bench/import_oocore.py

clean:
	rm -rf $(DEMO) build *.egg-info .pytest_cache
