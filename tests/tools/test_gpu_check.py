"""tools/bench/gpu_check.sh on a machine without a GPU (DEVICE=cpu): it runs end to end at a small scale, records
why the GPU-only parts were skipped, and writes summary.md and summary.json; its helpers (the CUDA-test selection
plugin, the install's dependency check) do what docs/gpu.md says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "tools" / "bench"
sys.path.insert(0, str(BENCH))
import gpu_check  # noqa: E402


def _run_check(tmp_path: Path, **knobs) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable, **knobs}
    return subprocess.run(["bash", str(BENCH / "gpu_check.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def _check_summary(out: Path, epochs: int) -> dict:
    s = json.loads((out / "summary.json").read_text())
    md = (out / "summary.md").read_text()
    assert s["params"]["device"] == "cpu" and s["env"]["python"]
    for name in ("env", "install", "gather", "generate", "sample", "pack-gpu", "pack-host", "pack-cold", "train-gpu",
                 "train-host", "train-cold"):
        assert s["steps"][name]["rc"] == "0", (name, s["steps"], (out / "logs" / f"{name}.log").read_text()[-2000:])
    assert "host syncs are a CUDA notion" in s["skipped"]["syncs"]
    g = s["gather"]["dtypes"]
    for dtype in ("float32", "bfloat16"):
        assert g[dtype]["methods"]["cpu_index_select"]["exact"] and g[dtype]["methods"]["cpu_index_select"]["GBps"] > 0
        assert set(g[dtype]["skipped"]) == {"gpu_resident", "uva", "pinned_copy"}
    hits = {"gpu": "gpu", "host": "host", "cold": "cold"}
    for cfg, tier in hits.items():
        epochs_run = s["train"][cfg]["epochs"]
        assert [e["epoch"] for e in epochs_run] == list(range(epochs))
        for e in epochs_run:
            assert e["hit_rate"][tier] == 1.0 and set(e["stage_s"]) >= {"read_s", "assemble_s", "compute_s"}
            assert e["epoch_s"] > 0 and e["overlap"] > 0
    assert "| tier | epoch | epoch_s" in md and "| float32 |" in md and "not sampled (no nvidia-smi)" in md
    return s


def test_cpu_run_small_without_the_test_step(tmp_path):
    r = _run_check(tmp_path, NODES="4000", EDGES="40000", DIM="16", FANOUTS="5,5", BATCH="128", EPOCHS="1",
                   GATHER_ROWS="20000", GATHER_K="2000", SKIP_TESTS="1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = _check_summary(tmp_path / "out", epochs=1)
    assert s["skipped"]["cuda-tests"] == "SKIP_TESTS=1"
    # a second run reuses the graph, plan and packs
    r = _run_check(tmp_path, NODES="4000", EDGES="40000", DIM="16", FANOUTS="5,5", BATCH="128", EPOCHS="1",
                   GATHER_ROWS="20000", GATHER_K="2000", SKIP_TESTS="1", BUDGET_S="200")
    assert r.returncode == 0, r.stdout[-3000:]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["data"]["reused"] is True and "generate" not in s["steps"]


@pytest.mark.slow
def test_cpu_run_as_documented(tmp_path):
    """`DEVICE=cpu bash tools/bench/gpu_check.sh`: SCALE=small, 2 epochs, with the CUDA tests (all skipped here)."""
    r = _run_check(tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = _check_summary(tmp_path / "out", epochs=2)
    t = s["cuda_tests"]
    assert t["selected"] > 0 and t["counts"] == {"skipped": t["selected"]}, t
    assert set(t["skip_reasons"]) <= {"needs an NVIDIA GPU", "needs a CUDA GPU"}


def test_cuda_select_keeps_only_the_tests_that_need_a_gpu(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "@pytest.mark.skipif(True, reason='needs a CUDA GPU')\n"
        "def test_a(): pass\n"
        "@pytest.mark.cuda\n"
        "def test_b(): pass\n"
        "@pytest.mark.skipif(True, reason='needs scipy')\n"
        "def test_c(): pass\n"
        "def test_d(): pass\n")
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(BENCH)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "cuda_select", "--cuda-report", str(report),
                        "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning", "test_sample.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(report.read_text())
    assert d["selected"] == 2 and d["deselected"] == 2
    assert d["counts"] == {"passed": 1, "skipped": 1} and d["skip_reasons"] == {"needs a CUDA GPU": 1}
    assert d["tests"]["test_sample.py::test_b"]["outcome"] == "passed"


def test_install_never_asks_for_torch_and_only_for_what_is_missing():
    missing = gpu_check.missing_requirements(["torch>=99", "numpy>=1.0", "numpy>=999", "no-such-package-xyz>=1",
                                              "tomli>=2.0; python_version < '3.0'"])
    assert missing == ["numpy>=999", "no-such-package-xyz>=1"]
    reqs = gpu_check.project_requirements(REPO, ["test"])
    assert any(r.startswith("zarr") for r in reqs) and any(r.startswith("pytest") for r in reqs)
    assert gpu_check.missing_requirements(reqs) == []  # this machine has them all (make install)
