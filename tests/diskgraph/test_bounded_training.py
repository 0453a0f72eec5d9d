"""Training from a pack bounded by ``--max-blowup`` (issue 17): the rows left in the feature table arrive bit-exact, so
a run from a bounded pack equals the run from the unbounded pack of the same plan, loss for loss; the epoch record
counts the table rows and the whole pages read for them."""

from __future__ import annotations

import json

from diskgraph.cli import main


def _train(ds, tmp_path, pack: str) -> list[dict]:
    log = tmp_path / f"{pack}.jsonl"
    assert main(["train", str(ds), "--pack", pack, "--epochs", "2", "--seed", "0", "--hidden", "32",
                 "--run-dir", str(tmp_path / f"run-{pack}"), "--log-json", str(log), "-q"]) == 0
    return [json.loads(x) for x in log.read_text().splitlines()]


def test_a_bounded_pack_trains_as_the_unbounded_one(tmp_path, shared_dataset):
    ds = tmp_path / "cora"
    assert main(["preprocess", "all", "--npz", str(shared_dataset("cora")), "--out", str(ds), "--fanouts", "10,5",
                 "--batch-size", "64", "--seed", "0", "--max-blowup", "inf", "--name", "unbounded", "-q"]) == 0
    for name, bound in (("half", "0.5"), ("zero", "0")):
        assert main(["preprocess", "pack", str(ds), "--plan", "unbounded", "--name", name, "--max-blowup", bound,
                     "-q"]) == 0
    runs = {p: _train(ds, tmp_path, p) for p in ("unbounded", "half", "zero")}
    want = runs["unbounded"]
    for name in ("half", "zero"):
        got = runs[name]
        assert [e["loss"] for e in got[:-1]] == [e["loss"] for e in want[:-1]]  # bit-exact inputs, same run
        assert got[-1]["test_acc"] == want[-1]["test_acc"]
    zero = runs["zero"][0]
    assert zero["hit_rate"]["table"] == 1.0 and zero["cold_bytes_needed"] > 0
    assert zero["extent_bytes"] >= zero["cold_bytes_needed"]  # whole 4 KiB pages of the table rows
    half = runs["half"][0]
    assert 0 < half["hit_rate"]["table"] < 1 and half["hit_rate"]["cold"] > 0
    assert "table" not in want[0]["hit_rate"]


def test_a_damaged_feature_table_is_refused_when_its_rows_are_read(tmp_path, shared_dataset, capsys):
    """A byte flipped in the feature table, under rows a bounded pack reads from it: training stops with exit 2 and
    one sentence naming the feature table, the minibatch and the fix."""
    ds = tmp_path / "cora"
    assert main(["preprocess", "all", "--npz", str(shared_dataset("cora")), "--out", str(ds), "--fanouts", "5",
                 "--batch-size", "512", "--seed", "0", "--max-blowup", "0", "-q"]) == 0
    chunk = next(p for p in sorted((ds / "features" / "c").rglob("*")) if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[5000] ^= 0xFF
    chunk.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["train", str(ds), "--epochs", "1", "--run-dir", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "features" in err and "do not match the checksum" in err, err
    assert "restore it or pack the plan again" in err
