"""The `diskgraph` command line: help, exit statuses, logging and progress, sizes."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from diskgraph.units import parse_bytes

SUBCOMMANDS = [[], ["preprocess"], ["preprocess", "import"], ["generate"], ["inspect"]]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "diskgraph")
def test_every_subcommand_has_help(cli, words):
    r = cli.run(*words, "--help")
    assert r.rc == 0
    assert r.out.startswith("usage: diskgraph") and r.err == ""
    if words[-1:] == ["import"]:
        for flag in ("--npz", "--edges", "--features", "--labels", "--split", "--undirected", "--dedup",
                     "--drop-self-loops", "--memory-budget", "--config", "--print-config", "--quiet"):
            assert flag in r.out
    if words == ["inspect"]:
        assert "--verify" in r.out and "--json" in r.out


def test_help_in_a_subprocess(cli):
    r = cli.subprocess("preprocess", "import", "--help")
    assert r.rc == 0 and "--memory-budget" in r.out and r.err == ""
    r = cli.subprocess("--version")
    assert r.rc == 0 and r.out.strip() == "diskgraph 0.1.0"


@pytest.mark.parametrize("words", [[], ["preprocess"]])
def test_missing_subcommand_prints_usage_and_exits_2(cli, words):
    r = cli.run(*words)
    assert r.rc == 2 and "usage: diskgraph" in r.err and r.out == ""


def test_unknown_flag_is_a_usage_error(cli):
    r = cli.run("inspect", "--bogus")
    assert r.rc == 2 and "unrecognized arguments: --bogus" in r.err


@pytest.mark.parametrize("args, needles", [
    (["generate", "--edges", "10", "--out", "x"], ["--nodes"]),
    (["generate", "--nodes", "10", "--out", "x"], ["--edges"]),
    (["generate", "--nodes", "10", "--edges", "10"], ["--out"]),
    (["generate", "--nodes", "0", "--edges", "10", "--out", "x"], ["--nodes 0"]),
])
def test_generate_refuses_missing_sizes(cli, tmp_path, refused, args, needles):
    refused(cli.run(*args), *needles, out=tmp_path / "x")


@pytest.fixture
def raw_inputs(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "e.npy", rng.integers(0, 500, (2, 5000)))
    np.save(tmp_path / "x.npy", rng.standard_normal((500, 16)).astype(np.float32))
    return tmp_path


def test_log_lines_say_what_happened_and_no_bars_off_a_terminal(cli, raw_inputs):
    r = cli.subprocess("preprocess", "import", "--edges", raw_inputs / "e.npy", "--features", raw_inputs / "x.npy",
                       "--out", raw_inputs / "ds")
    assert r.rc == 0, r.err
    lines = r.err.splitlines()
    assert all(line.startswith("diskgraph: ") for line in lines), r.err
    text = r.err
    assert "importing" in text and "memory budget" in text
    assert "topology: wrote CSC with 5.0K edges" in text and "edges/s" in text
    assert "features: wrote 500 x 16 float32 (31.2 KiB)" in text and "/s" in text
    assert "imported" in text
    assert "\r" not in text  # progress bars are drawn only on a terminal
    assert r.out == ""


def test_quiet_prints_nothing_on_success(cli, raw_inputs):
    r = cli.subprocess("preprocess", "import", "--edges", raw_inputs / "e.npy", "--out", raw_inputs / "ds", "-q")
    assert r.rc == 0 and r.err == "" and r.out == ""
    r = cli.subprocess("inspect", raw_inputs / "ds", "--verify", "--json", "--quiet")
    assert r.rc == 0 and r.err == ""
    assert json.loads(r.out)["num_edges"] == 5000


def test_verbose_logs_debug(cli, raw_inputs):
    r = cli.subprocess("preprocess", "import", "--edges", raw_inputs / "e.npy", "--out", raw_inputs / "ds", "-v")
    assert r.rc == 0 and "imported" in r.err


def test_progress_bar_draws_on_a_terminal(monkeypatch, capsys):
    from diskgraph.store import progress

    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    progress.set_quiet(False)
    with progress.Progress("copying", 4 << 20, "B", min_interval=0) as bar:
        bar.update(1 << 20)
        bar.update(3 << 20)
    err = capsys.readouterr().err
    # tqdm draws it: redrawn in place ("\r"), sizes in binary units, one line left at the end
    assert "\rcopying:" in err and "100.0%" in err and "4.0 MiB/4.0 MiB" in err and err.endswith("\n")
    progress.set_quiet(True)
    with progress.Progress("copying", 10) as bar:
        bar.update(10)
    progress.set_quiet(False)
    assert capsys.readouterr().err == ""


def test_inspect_without_features_or_labels(cli, raw_inputs):
    assert cli.run("preprocess", "import", "--edges", raw_inputs / "e.npy", "--out", raw_inputs / "ds", "-q").rc == 0
    r = cli.run("inspect", raw_inputs / "ds")
    assert r.rc == 0
    assert "features      none" in r.out and "labels        none" in r.out and "edges         5,000" in r.out
    info = json.loads(cli.run("inspect", raw_inputs / "ds", "--json").out)
    assert info["feature_dim"] == 0 and info["num_classes"] is None and info["splits"] == {}


# -- sizes -------------------------------------------------------------------------------------------

UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
         "g": 1 << 30, "gib": 1 << 30, "gb": 10**9, "t": 1 << 40, "tib": 1 << 40, "tb": 10**12}


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 10**6), unit=st.sampled_from(sorted(UNITS)), upper=st.booleans(), space=st.booleans())
def test_parse_bytes_whole_numbers(n, unit, upper, space):
    text = f"{n}{' ' if space else ''}{unit.upper() if upper else unit}"
    assert parse_bytes(text) == n * UNITS[unit]
    assert parse_bytes(f"  {text}  ") == n * UNITS[unit]


@settings(max_examples=50, deadline=None)
@given(x=st.floats(0, 1e4, allow_nan=False), unit=st.sampled_from(sorted(UNITS)))
def test_parse_bytes_fractions(x, unit):
    text = f"{x:.3f}"
    assert parse_bytes(f"{text}{unit}") == int(float(text) * UNITS[unit])


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=12))
def test_parse_bytes_never_crashes(text):
    assume(not re.search(r"[eE][0-9]{3}", text))  # huge exponents: the known bug below
    try:
        value = parse_bytes(text)
    except argparse.ArgumentTypeError as e:
        assert repr(text) in str(e)
    else:
        assert isinstance(value, int) and value >= 0


@pytest.mark.parametrize("text", ["", "M", "12 apples", "-5M", "1.2.3G", "5 M B", "0x10"])
def test_parse_bytes_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a size"):
        parse_bytes(text)


@pytest.mark.parametrize("text", ["1e999", "1e19", "10000000T"])
def test_parse_bytes_refuses_overflowing_sizes(text):
    with pytest.raises(argparse.ArgumentTypeError, match="too large"):
        parse_bytes(text)


# -- list values that start with -1 (issue 12, finding 9) ---------------------------------------------

@pytest.mark.parametrize("words, flag", [
    (["preprocess", "sample", "DIR"], "--fanouts"),
    (["preprocess", "sample", "DIR"], "--eval-fanouts"),
    (["preprocess", "all", "DIR"], "--fanouts"),
    (["preprocess", "all", "DIR"], "--eval-fanouts"),
    (["train", "DIR"], "--fanouts"),
])
def test_fanouts_starting_with_minus_one_need_no_equals_sign(cli, words, flag):
    r = cli.run(*words, flag, "-1,-1", "--print-config")
    assert r.rc == 0, r.err
    assert f'{flag[2:].replace("-", "_")} = "-1,-1"' in r.out
    r = cli.run(*words, flag, "-1", "--print-config")
    assert r.rc == 0 and f'{flag[2:].replace("-", "_")} = "-1"' in r.out
    r = cli.run(*words, flag, "-1,-2", "--print-config")  # still checked: -2 is not a fanout
    assert r.rc == 2 and "is not a fanout list" in r.err


def test_minus_one_fanouts_sample_every_neighbor(cli, raw_inputs):
    assert cli.run("preprocess", "import", "--edges", raw_inputs / "e.npy", "--features", raw_inputs / "x.npy",
                   "--split", "random:0.5,0.25,0.25", "--out", raw_inputs / "ds", "-q").rc == 0
    r = cli.run("preprocess", "sample", raw_inputs / "ds", "--fanouts", "5,5", "--eval-fanouts", "-1,-1", "-q")
    assert r.rc == 0, r.err
    from diskgraph.store.plan import open_plan

    assert open_plan(raw_inputs / "ds" / "plans" / "default").config["eval_fanouts"] == [-1, -1]


# -- outputs: missing parents are made, foreign directories are never replaced --------------------------

def test_missing_parents_of_the_output_are_created(cli, raw_inputs):
    out = raw_inputs / "data" / "graphs" / "ds"
    assert cli.run("preprocess", "import", "--edges", raw_inputs / "e.npy", "--out", out, "-q").rc == 0
    assert (out / "manifest.json").is_file()


def test_overwrite_never_replaces_what_diskgraph_did_not_write(cli, raw_inputs, refused):
    foreign = raw_inputs / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    msg = refused(cli.run("preprocess", "import", "--edges", raw_inputs / "e.npy", "--out", foreign, "--overwrite"),
                  str(foreign), "not a directory diskgraph wrote", "--out")
    assert "remove it yourself" in msg
    refused(cli.run("generate", "--format", "raw", "--nodes", "10", "--edges", "10", "--out", foreign, "--overwrite"),
            str(foreign), "not a directory diskgraph wrote")
    refused(cli.run("generate", "--nodes", "10", "--edges", "10", "--out", foreign, "--overwrite"),
            str(foreign), "not a directory diskgraph wrote")
    refused(cli.run("train", raw_inputs / "ds", "--run-dir", foreign, "--overwrite"), str(foreign), "run.json",
            "--run-dir")
    assert (foreign / "holiday.jpg").read_bytes() == b"precious"


def test_overwrite_replaces_only_the_same_kind(cli, raw_inputs, refused):
    ds = raw_inputs / "ds"
    assert cli.run("preprocess", "import", "--edges", raw_inputs / "e.npy", "--features", raw_inputs / "x.npy",
                   "--split", "random:0.5,0.25,0.25", "--out", ds, "-q").rc == 0
    assert cli.run("preprocess", "sample", ds, "--fanouts", "3", "-q").rc == 0
    plan = ds / "plans" / "default"
    refused(cli.run("preprocess", "import", "--edges", raw_inputs / "e.npy", "--out", plan, "--overwrite"),
            str(plan), "a diskgraph plan, not a diskgraph dataset")
    refused(cli.run("generate", "--format", "raw", "--nodes", "10", "--edges", "10", "--out", ds, "--overwrite"),
            str(ds), "a diskgraph dataset, not diskgraph generate's raw inputs")
    refused(cli.run("preprocess", "pack", ds, "--name", str(plan), "--overwrite"), "a diskgraph plan, not a diskgraph pack")
    refused(cli.run("preprocess", "sample", ds, "--fanouts", "3"), f"plan {plan} already exists", "--name",
            "--overwrite")
    assert cli.run("preprocess", "sample", ds, "--fanouts", "3", "--overwrite", "-q").rc == 0
    # raw inputs carry a manifest, so they can be replaced by raw inputs
    raw = raw_inputs / "raw"
    assert cli.run("generate", "--format", "raw", "--nodes", "10", "--edges", "10", "--out", raw, "-q").rc == 0
    assert json.loads((raw / "manifest.json").read_text())["format"] == "diskgraph.raw-inputs"
    assert cli.run("generate", "--format", "raw", "--nodes", "20", "--edges", "10", "--out", raw, "--overwrite",
                   "-q").rc == 0
    assert np.load(raw / "labels.npy").shape == (20,)
