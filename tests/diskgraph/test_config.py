"""Config files for the command line (diskgraph.config): precedence, --print-config, refusals."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from diskgraph.config import load_config_file
from diskgraph.store.dataset import open_dataset
from diskgraph.store.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture
def edges(tmp_path):
    p = tmp_path / "e.npy"
    np.save(p, np.array([[0, 1, 2, 3, 3], [1, 2, 3, 0, 3]]))
    return p


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def resolved(cli, *args) -> dict:
    r = cli.run(*args, "--print-config")
    assert r.rc == 0, r.err
    return tomllib.loads(r.out)


def test_config_supplies_options(cli, tmp_path, edges):
    cfg = write(tmp_path, f'memory_budget = "64M"\ndedup = true\n\n[import]\nedges = "{edges}"\nout = "{tmp_path / "ds"}"\n'
                          "drop-self-loops = true\nnum_nodes = 6\n")
    r = cli.run("preprocess", "import", "--config", cfg, "-q")
    assert r.rc == 0, r.err
    ds = open_dataset(tmp_path / "ds")
    opts = ds.manifest["options"]
    assert opts["memory_budget"] == 64 << 20 and opts["dedup"] is True and opts["drop_self_loops"] is True
    assert ds.num_nodes == 6 and ds.num_edges == 4  # the self-loop 3 -> 3 is dropped


def test_print_config_shows_the_resolved_options_and_runs_nothing(cli, tmp_path, edges):
    cfg = write(tmp_path, f'memory_budget = "2GiB"\nseed = 5\n[import]\nedges = "{edges}"\nout = "{tmp_path / "ds"}"\n'
                          'split = "random:0.5,0.25,0.25"\n')
    t = resolved(cli, "preprocess", "import", "--config", cfg)
    assert list(t) == ["import"]
    imp = t["import"]
    assert imp["memory_budget"] == 2 << 30 and imp["seed"] == 5 and imp["edges"] == str(edges)
    assert imp["split"] == "random:0.5,0.25,0.25" and imp["out"] == str(tmp_path / "ds")
    assert imp["undirected"] is False and imp["src_column"] == "source"
    assert "npz" not in imp  # unset options are comments
    assert not (tmp_path / "ds").exists()
    r = cli.run("preprocess", "import", "--config", cfg, "--print-config")
    assert "# npz = (not set)" in r.out
    # the printed config, used as a config file, resolves to the same options
    again = write(tmp_path, r.out, "again.toml")
    assert resolved(cli, "preprocess", "import", "--config", again) == t


def test_print_config_without_a_config_file(cli):
    t = resolved(cli, "inspect", "somewhere", "--verify")
    assert t == {"inspect": {"dataset": "somewhere", "verify": True, "json": False}}
    assert resolved(cli, "generate", "--nodes", "10")["generate"]["nodes"] == 10


def test_flags_beat_the_command_table_which_beats_top_level(cli, tmp_path, edges):
    cfg = write(tmp_path, 'memory_budget = "1G"\nseed = 1\nout = "top"\n[import]\nseed = 2\nout = "table"\n')
    imp = resolved(cli, "preprocess", "import", "--config", cfg)["import"]
    assert imp["seed"] == 2 and imp["out"] == "table" and imp["memory_budget"] == 1 << 30
    imp = resolved(cli, "preprocess", "import", "--config", cfg, "--seed", "3", "--out", "flag", "--memory-budget", "5M")[
        "import"]
    assert imp["seed"] == 3 and imp["out"] == "flag" and imp["memory_budget"] == 5 << 20
    # the flag wins when the import runs, too
    cfg = write(tmp_path, f'[import]\nedges = "{edges}"\nout = "{tmp_path / "from-config"}"\n', "run.toml")
    r = cli.run("preprocess", "import", "--config", cfg, "--out", tmp_path / "from-flag", "-q")
    assert r.rc == 0, r.err
    assert (tmp_path / "from-flag").is_dir() and not (tmp_path / "from-config").exists()


def test_top_level_keys_of_other_commands_are_ignored(cli, tmp_path):
    cfg = write(tmp_path, "nodes = 100\nverify = true\n[generate]\nedges = 7\n[inspect]\njson = true\n")
    imp = resolved(cli, "preprocess", "import", "--config", cfg)["import"]
    assert "nodes" not in imp and imp.get("edges") is None
    assert resolved(cli, "generate", "--config", cfg)["generate"]["edges"] == 7
    assert resolved(cli, "inspect", "--config", cfg)["inspect"] == {"verify": True, "json": True}


def test_yaml_config(cli, tmp_path, edges):
    pytest.importorskip("yaml")
    cfg = write(tmp_path, f"undirected: true\nimport:\n  edges: {edges}\n  memory-budget: 256M\n", "c.yaml")
    imp = resolved(cli, "preprocess", "import", "--config", cfg)["import"]
    assert imp["undirected"] is True and imp["memory_budget"] == 256 << 20 and imp["edges"] == str(edges)


@pytest.mark.parametrize("text, needles", [
    ('colour = "red"\n', ["unknown option 'colour'"]),
    ('[import]\ncolour = "red"\n', ["[import]", "unknown option 'colour'"]),
    ('[import]\nnodes = 5\n', ["unknown option 'nodes'"]),  # a generate option inside [import]
    ('[imprt]\nout = "x"\n', ["unknown table [imprt]", "[import]"]),
    ("[import\nout = \n", ["is not valid TOML"]),
    ('undirected = "yes"\n', ["undirected must be true or false", "--undirected"]),
    ("out = true\n", ["out must be a value for --out"]),
    ('memory_budget = "lots"\n', ["memory_budget = 'lots'", "--memory-budget"]),
    ("memory_budget = 1e999\n", ["--memory-budget"]),
    ("num_nodes = -4\n", ["num_nodes = -4", "--num-nodes"]),
    ("seed = 1.5\n", ["--seed"]),
    ('feature_dtype = "int8"\n', ["feature_dtype = 'int8'", "float32", "--feature-dtype"]),
    ('edges_format = "xml"\n', ["--edges-format"]),
    ("out = { a = 1 }\n", ["unknown table [out]"]),
    ('[import]\nout = ["a", { b = 1 }]\n', ["out must be a single value"]),
])
def test_bad_config_is_refused_naming_the_file(cli, tmp_path, refused, text, needles):
    cfg = write(tmp_path, text)
    r = cli.run("preprocess", "import", "--config", cfg, "--out", tmp_path / "ds")
    refused(r, str(cfg), *needles, out=tmp_path / "ds")


def test_bad_yaml_and_missing_file(cli, tmp_path, refused):
    pytest.importorskip("yaml")
    cfg = write(tmp_path, "import: [unclosed\n", "c.yml")
    refused(cli.run("inspect", "x", "--config", cfg), str(cfg), "not valid YAML")
    cfg = write(tmp_path, "- a\n- b\n", "list.yaml")
    refused(cli.run("inspect", "x", "--config", cfg), str(cfg), "table of options")
    missing = tmp_path / "none.toml"
    refused(cli.run("inspect", "x", "--config", missing), str(missing), "--config")


def test_load_config_file(tmp_path):
    assert load_config_file(write(tmp_path, 'a = 1\n[import]\nb = "x"\n')) == {"a": 1, "import": {"b": "x"}}
    assert load_config_file(write(tmp_path, "", "empty.toml")) == {}
    with pytest.raises(InputError, match="does not exist"):
        load_config_file(str(tmp_path / "nope.toml"))
