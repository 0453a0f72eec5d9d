# diskgraph developer commands. `make demo` and `make test` work on a fresh machine:
# they install the package (editable) with the pinned CPU torch from constraints.txt.
PY ?= python3
PIP = $(PY) -m pip
DEMO ?= demo-data
PYTEST_ARGS ?=

.PHONY: install demo test test-slow bench-import clean

install:
	$(PIP) install -q -e ".[test,pyg,tensorboard]" -c constraints.txt

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
