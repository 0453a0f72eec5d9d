"""`--memory-budget` small enough to split the topology into several destination ranges.

The result must be the same CSC as an in-memory build, and the import process must
stay near the budget (measured in a subprocess: peak anonymous memory sampled from
/proc/self/status, and the kernel's peak RSS less the memory-mapped inputs).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from diskgraph.store.dataset import open_dataset

N, E, F = 100_000, 2_000_000, 64
BUDGET = 48 << 20

PROBE = textwrap.dedent("""
    import json, resource, sys, threading, time
    import numpy as np
    import diskgraph.cli, diskgraph.store.importer, diskgraph.store.dataset
    from diskgraph.native import csc as kernels

    kernels.count_by_key(np.zeros(1, np.int64), 0, np.zeros(1, np.int64))  # load the compiled kernels

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    base_anon, base_rss = status("RssAnon"), status("VmRSS")
    peak = [base_anon]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], status("RssAnon"))
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    rc = diskgraph.cli.main(sys.argv[1:])
    stop.set()
    t.join()
    print(json.dumps({"rc": rc, "anon_growth": max(peak[0], status("RssAnon")) - base_anon,
                      "hwm_growth": status("VmHWM") - base_rss}))
""")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("mem")
    rng = np.random.default_rng(0)
    np.save(d / "e.npy", rng.integers(0, N, (2, E)))
    np.save(d / "x.npy", rng.standard_normal((N, F)).astype(np.float32))
    (d / "probe.py").write_text(PROBE)
    return d


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to measure memory")
def test_small_budget_gives_identical_csc_within_budget(inputs, tmp_path, csc_oracle):
    out = tmp_path / "ds"
    args = ["preprocess", "import", "--edges", inputs / "e.npy", "--features", inputs / "x.npy", "--undirected",
            "--dedup", "--memory-budget", str(BUDGET), "--out", out, "-q"]
    proc = subprocess.run([sys.executable, str(inputs / "probe.py"), *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    assert m["rc"] == 0, proc.stderr

    ds = open_dataset(out)
    assert ds.manifest["import"]["csc_parts"] >= 3, ds.manifest["import"]
    assert ds.manifest["options"]["memory_budget"] == BUDGET
    e = np.load(inputs / "e.npy")
    indptr, indices = csc_oracle(e[0], e[1], N, undirected=True, dedup=True)
    np.testing.assert_array_equal(ds.indptr, indptr)
    np.testing.assert_array_equal(ds.indices, indices)
    np.testing.assert_array_equal(ds.features.read_rows(0, N), np.load(inputs / "x.npy"))

    # memory the import allocated stays within the budget ...
    assert m["anon_growth"] <= BUDGET, f"anonymous memory grew by {m['anon_growth'] / 2**20:.1f} MiB"
    # ... and the peak RSS grows by at most the budget plus the memory-mapped inputs it streams through
    mapped = (inputs / "e.npy").stat().st_size + (inputs / "x.npy").stat().st_size
    assert m["hwm_growth"] <= BUDGET + mapped + (16 << 20), f"peak RSS grew by {m['hwm_growth'] / 2**20:.1f} MiB"
    # an in-memory build would hold the 4M stored edges' (src, dst) as int64 alone: 64 MB, above the budget
    assert 2 * ds.num_edges * 8 > BUDGET


def test_budgets_agree(cli, inputs, tmp_path):
    """The same input under a budget that fits everything in one range gives byte-identical arrays."""
    outs = []
    for budget in ("40M", "1G"):
        out = tmp_path / budget
        r = cli.run("preprocess", "import", "--edges", inputs / "e.npy", "--drop-self-loops", "--memory-budget", budget,
                    "--num-nodes", N, "--out", out, "-q")
        assert r.rc == 0, r.err
        outs.append(open_dataset(out))
    small, big = outs
    assert small.manifest["import"]["csc_parts"] > 1 and big.manifest["import"]["csc_parts"] == 1
    assert small.manifest["arrays"]["topology/indices"]["sha256"] == big.manifest["arrays"]["topology/indices"]["sha256"]
    assert small.manifest["arrays"]["topology/indptr"]["sha256"] == big.manifest["arrays"]["topology/indptr"]["sha256"]
