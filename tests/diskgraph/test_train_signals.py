"""Stopping `diskgraph train` in the foreground (issue 12, finding 9).

SIGINT (Ctrl-C) and SIGTERM make the trainer checkpoint after the current minibatch; the command then
says where the checkpoint is and prints the command that resumes it, and exits with 130 or 143. A run
resumed with that command finishes the epochs. Interrupts that reach the command line's generic handler
say what each command actually left behind.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diskgraph.generate import generate_dataset
from diskgraph.preprocess import run_pack, run_sample


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """A synthetic dataset with many small train minibatches (about 190 per epoch)."""
    ds = tmp_path_factory.mktemp("signals") / "syn"
    generate_dataset(ds, nodes=20_000, edges=120_000, feature_dim=16, classes=4, seed=0)
    run_sample(ds, fanouts=[5, 5], batch_size=64, seed=0, splits=["train", "val"])
    run_pack(ds, host_cache=256 << 10)
    return ds


def _train_until_steps(ds: Path, run: Path, steps: Path, sig: int, *extra) -> subprocess.CompletedProcess:
    """Start `diskgraph train`, send ``sig`` once the step log shows three minibatches, wait for the exit."""
    argv = [sys.executable, "-m", "diskgraph", "train", str(ds), "--run-dir", str(run), "--epochs", "2",
            "--hidden", "16", "--device", "cpu", "--step-log", str(steps), "-q", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if steps.exists() and len(steps.read_text().splitlines()) >= 3:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_and_says_how_to_resume(packed, tmp_path, sig, status):
    run, steps = tmp_path / "run", tmp_path / "steps.jsonl"
    r = _train_until_steps(packed, run, steps, sig)
    assert r.returncode == status, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    name = signal.Signals(sig).name
    assert last.startswith(f"diskgraph: stopped by {name}; the checkpoint {run / 'checkpoint.pt'} (epoch 0, minibatch "), last
    assert "nothing was left" not in r.stderr
    info = json.loads((run / "checkpoint.json").read_text())
    assert info["epoch"] == 0 and 3 <= info["position"] < 190
    assert info["position"] == len(steps.read_text().splitlines())  # checkpointed after the last minibatch trained
    # the printed command resumes the run mid-epoch and finishes it
    command = last[last.index("`") + 1:last.rindex("`")]
    words = shlex.split(command)
    assert words[:2] == ["diskgraph", "train"] and words[-1] == "--resume"
    done = subprocess.run([sys.executable, "-m", "diskgraph", *words[1:]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs if "epoch" in e and "loss" in e] == [0, 1]


def test_a_second_signal_stops_at_once(packed, tmp_path):
    run, steps = tmp_path / "run", tmp_path / "steps.jsonl"
    argv = [sys.executable, "-m", "diskgraph", "train", str(packed), "--run-dir", str(run), "--epochs", "50",
            "--hidden", "16", "--device", "cpu", "--step-log", str(steps), "-q"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (steps.exists() and steps.read_text().count("\n") >= 1):
        time.sleep(0.02)
    # two signals back to back: the second one arrives while the first checkpoint is being written, or after it
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "nothing was left" not in err


# -- what the generic interrupt handler says ---------------------------------------------------------------

def _interrupt(*_a, **_k):
    raise KeyboardInterrupt


def test_interrupted_train_names_its_checkpoint_or_its_absence(cli, monkeypatch, tmp_path):
    import diskgraph.train

    monkeypatch.setattr(diskgraph.train, "run_training", _interrupt)
    run = tmp_path / "run"
    r = cli.run("train", tmp_path / "ds", "--run-dir", run)
    assert r.rc == 130
    assert r.err.strip() == f"diskgraph: interrupted before the first checkpoint; {run} holds nothing to resume"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"x")
    (run / "checkpoint.json").write_text(json.dumps({"epoch": 3, "position": 7}))
    (run / "run.json").write_text("{}")
    r = cli.run("train", tmp_path / "ds", "--run-dir", run, "--epochs", "5", "--overwrite")
    assert r.rc == 130
    assert r.err.strip() == (f"diskgraph: interrupted; the checkpoint {run / 'checkpoint.pt'} (epoch 3, minibatch 7) is "
                             f"the last one written, continue from it with `diskgraph train {tmp_path / 'ds'} --run-dir "
                             f"{run} --epochs 5 --resume`")


def test_interrupted_writers_say_what_they_left(cli, monkeypatch, tmp_path):
    import diskgraph.cli_preprocess as pre

    out = tmp_path / "ds"
    monkeypatch.setattr(pre, "import_from_args", _interrupt)
    r = cli.run("preprocess", "import", "--edges", "e.npy", "--out", out)
    assert (r.rc, r.err.strip()) == (130, f"diskgraph: interrupted; nothing was left at {out}")
    # an existing output that --overwrite was about to replace is left as it was
    out.mkdir()
    r = cli.run("preprocess", "import", "--edges", "e.npy", "--out", out, "--overwrite")
    assert (r.rc, r.err.strip()) == (130, f"diskgraph: interrupted; {out} was left as it was")
    # interrupted after the output was complete (between the rename and the exit)
    from diskgraph.store import atomic

    raw = tmp_path / "raw"
    real_commit = atomic.AtomicDirectory._commit

    def commit_then_interrupt(self):
        real_commit(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.AtomicDirectory, "_commit", commit_then_interrupt)
    r = cli.run("generate", "--format", "raw", "--nodes", "10", "--edges", "10", "--out", raw)
    assert (r.rc, r.err.strip()) == (130, f"diskgraph: interrupted after {raw} was complete; it is kept")
    # preprocess all: finished stages are kept and a rerun continues
    monkeypatch.setattr(pre, "import_from_args", lambda args: Path(args.out))
    monkeypatch.setattr(pre, "_import_stage", lambda args: (Path(args.out).mkdir(exist_ok=True), Path(args.out))[1])
    monkeypatch.setattr(pre, "_sample_stage", _interrupt)
    r = cli.run("preprocess", "all", "--edges", "e.npy", "--out", tmp_path / "all")
    assert r.rc == 130 and "the stages that finished are kept in" in r.err and "continues from them" in r.err
    # a command that writes nothing
    import diskgraph.store.dataset

    monkeypatch.setattr(diskgraph.store.dataset, "open_dataset", _interrupt)
    r = cli.run("inspect", tmp_path / "all")
    assert (r.rc, r.err.strip()) == (130, "diskgraph: interrupted")
