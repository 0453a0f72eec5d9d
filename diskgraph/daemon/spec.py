"""Job specs: the CLI's options as JSON (or TOML), checked before a job is queued.

A spec is::

    {"dataset": "data/cora",                                   # where the dataset is, or is made
     "preprocess": {"npz": "raw/cora.npz", "fanouts": "10,5"},  # options of `diskgraph preprocess all`
     "train": {"model": "sage", "epochs": 2},                   # options of `diskgraph train`
     "predict": {"nodes": "test"},                              # options of `diskgraph predict` (after train)
     "embed": {"layer": 1, "dtype": "float16"},                 # options of `diskgraph embed` (after train)
     "name": "cora-sage"}                                       # optional label

with ``preprocess``, ``train`` or both, and ``predict`` and/or ``embed`` (inference with the model the
job's train stage makes; their keys are the fields of
:class:`~diskgraph.inference_options.InferenceOptions`, checked by :func:`inference_options`). Keys
are the commands' option names (dashes or underscores); values have the JSON type of the option (true/false for flags, numbers for counts, strings for
names and paths; a fanout list may be an array). The values are then parsed by the commands' own
parsers, so a spec accepts exactly what the command line accepts. Options the daemon sets itself
(the output, the run directory, resume, overwrite, log files) are refused.

Paths (``dataset`` and every option that takes a path) are relative to the first allowed root or
absolute inside one; a path with ``..``, an absolute path elsewhere, or one whose symbolic links lead
outside the allowed roots is refused. Any refusal is a :class:`SpecError`: one sentence, HTTP 400.
The checked spec holds real paths, and the job's process resolves them again before each stage
(:mod:`.runner`), so a link made while the job waited cannot lead it outside the roots either.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import threading
from pathlib import Path

from ..cli_common import fanouts as _fanouts_type
from ..cli_common import parse_fanouts, positive_int
from ..cli_parsers import job_leaves
from ..units import parse_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = {"preprocess": "all", "train": "train"}
"""Spec section → the CLI leaf whose options it takes."""
COMMANDS = {"preprocess": "diskgraph preprocess all", "train": "diskgraph train"}

INFERENCE = ("predict", "embed")
"""Inference sections, run in this order after ``train`` (each a stage of the same name)."""

TOP_KEYS = {"dataset", "preprocess", "train", *INFERENCE, "name"}

DAEMON_SET = {
    "preprocess": {"dataset": "the spec's top-level dataset names it", "out": "the spec's top-level dataset names it",
                   "overwrite": "a daemon job never replaces existing artifacts"},
    "train": {"dataset": "the spec's top-level dataset names it", "run_dir": "each job has its own run directory",
              "resume": "the daemon resumes from checkpoints itself", "overwrite": "each job has its own run directory",
              "log_json": "the job's metrics are in its run directory", "step_log": "the job's step log is in its directory"},
    **{kind: {"kind": "the table's name says it", "run": "the model is the one the job's train stage makes",
              "overwrite": "a daemon job never replaces outputs it did not make",
              "log_json": "the summary is in the job's directory and its record",
              "stop": "the daemon stops a job itself"} for kind in INFERENCE},
}
"""Options the daemon sets itself, with the reason given when a spec sets them."""

META = {"config", "print_config", "quiet", "verbose", "help", "func", "section"}
NAME_OPTIONS = {"pack", "name", "plan"}
"""Options that take an artifact name (a bare name in specs: artifacts live inside the dataset)."""
PATH_METAVARS = {"PATH", "DIR", "FILE"}
RAW_INPUTS = ("npz", "edges", "features", "labels", "train", "val", "test")

INFERENCE_PATHS = {"out", "parquet"}
"""Inference options that name an output (a new path inside the allowed roots); ``nodes`` may name an input file."""
INFERENCE_ONLY = {"layer": "embed", "dtype": "embed"}
"""Inference options of one kind only."""

DEFAULT_CHECKPOINT_EVERY = 50
"""Minibatches between checkpoints of a daemon job that does not set ``checkpoint_every``."""


class SpecError(ValueError):
    """A spec was refused; the message is one sentence."""


MAX_DEPTH = 16
"""The deepest nesting of arrays and tables a spec may have (a real one has 3: spec, section, fanout list)."""


def too_deep(what: str) -> SpecError:
    """The refusal of a spec (``what`` names it) nested deeper than :data:`MAX_DEPTH`."""
    return SpecError(f"{what} is nested deeper than {MAX_DEPTH} levels of arrays and tables; a job spec needs 3 "
                     "(spec, section, fanout list), so send a flat one")


def check_nesting(data, what: str = "the request body") -> None:
    """Refuse ``data`` nested deeper than :data:`MAX_DEPTH` (walked without recursion, so any depth is safe)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= MAX_DEPTH:
                    raise too_deep(what)
                stack.append((child, depth + 1))


def parse_body(body: bytes, content_type: str = "application/json") -> dict:
    """A request body → the spec dict (JSON, or TOML when the content type says so)."""
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError("the request body is not UTF-8 text; send the spec as JSON") from None
    toml = kind in ("application/toml", "text/toml")
    try:
        data = tomllib.loads(text) if toml else json.loads(text)
    except RecursionError:  # the parsers recurse once per level
        raise too_deep("the request body") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"the request body is not valid TOML ({e}); fix the spec") from None
    except ValueError as e:
        raise SpecError(f"the request body is not valid JSON ({e}); send one JSON object") from None
    if not isinstance(data, dict):
        raise SpecError("a job spec must be a JSON object with dataset and a preprocess and/or train table")
    check_nesting(data)
    return data


def leaves() -> dict[str, argparse.ArgumentParser]:
    """Fresh leaf parsers of the CLI (spec section → parser) that raise :class:`SpecError` instead of exiting."""
    all_leaves = job_leaves()
    out = {}
    for section, leaf_name in SECTIONS.items():
        leaf = all_leaves[leaf_name]

        def error(message, section=section):
            raise SpecError(f"{section} spec: {message}; see `{COMMANDS[section]} --help`")

        leaf.error = error
        out[section] = leaf
    return out


def _show(value) -> str:
    """A value for an error message: JSON, cut to 60 characters."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in META and a.option_strings}


def path_options(parser: argparse.ArgumentParser) -> set[str]:
    """The options of ``parser`` that take a path (a spec holds them as real absolute paths once checked)."""
    return {dest for dest, a in _options(parser).items() if a.metavar in PATH_METAVARS}


def root_of(path: Path, roots: list[Path]) -> Path | None:
    """The root of ``roots`` that ``path`` lies in, as written (no links resolved); None when it lies in none."""
    return next((r for r in roots if path == r or r in path.parents), None)


def _check_value(section: str, key: str, value, action: argparse.Action):
    """The JSON type of ``value`` must fit the option; returns it (a fanout array as text)."""
    where = f"{section}.{key}"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise SpecError(f"{where} must be true or false, not {type(value).__name__}")
        return value
    t = action.type
    if t is _fanouts_type and isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return ",".join(str(v) for v in value)
    if t in (int, positive_int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif t is float:
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif t is parse_bytes:
        ok, want = (isinstance(value, (int, str)) and not isinstance(value, bool)), "a size (bytes or text like \"4M\")"
    else:
        ok, want = isinstance(value, str), "a string"
    if not ok:
        raise SpecError(f"{where} must be {want}, not {_show(value)}")
    return value


def section_argv(section: str, values: dict, parser: argparse.ArgumentParser) -> list[str]:
    """A spec section's checked values → command-line flags for ``parser`` (the dataset is added by the caller)."""
    known = _options(parser)
    argv: list[str] = []
    for key, value in values.items():
        action = known[key]
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            argv += [flag] if value else []
        elif isinstance(action, argparse._StoreFalseAction):
            argv += [] if value else [flag]
        else:
            argv += [f"{flag}={value}"]
    return argv


def _fanouts_text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _whole(where: str, value, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise SpecError(f"{where} must be a whole number of at least {least}, not {_show(value)}")
    return value


def _choice(where: str, value, choices) -> str:
    if value not in choices:
        raise SpecError(f"{where} must be one of {', '.join(map(json.dumps, choices))}, not {_show(value)}")
    return value


def inference_options(kind: str, values: dict, **fixed):
    """A ``predict`` / ``embed`` section (underscore keys, paths already checked) → its
    :class:`~diskgraph.inference_options.InferenceOptions`, with the fields the daemon sets in ``fixed`` (which win).

    The section's keys are the option fields (see :data:`DAEMON_SET` for those it may not set); values have their
    JSON type (a size may be text like ``"512M"``, fanouts an array or ``"10,5"``). Raises :class:`SpecError`.
    """
    from ..inference_options import EMBED_DTYPES, MODES, STORAGES, InferenceOptions

    opts = {}
    for key, value in values.items():
        where = f"{kind}.{key}"
        if key == "memory_budget":
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise SpecError(f"{where} must be a size (bytes or text like \"512M\"), not {_show(value)}")
            try:
                value = parse_bytes(value)
            except argparse.ArgumentTypeError as e:
                raise SpecError(f"{where}: {e}") from None
            if value <= 0:
                raise SpecError(f"{where} must be a positive size, not {_show(values[key])}")
        elif key in ("layer", "batch_size"):
            value = _whole(where, value, 1)
        elif key == "seed":
            value = _whole(where, value, 0)
        elif key == "fanouts":
            if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                value = ",".join(map(str, value))
            if not isinstance(value, str):
                raise SpecError(f"{where} must be an array of whole numbers or text like \"10,5\", not {_show(value)}")
            try:
                value = parse_fanouts(value)
            except argparse.ArgumentTypeError as e:
                raise SpecError(f"{where}: {e}") from None
        elif key == "mode":
            value = _choice(where, value, MODES)
        elif key == "storage":
            value = _choice(where, value, STORAGES)
        elif key == "dtype":
            value = _choice(where, value, EMBED_DTYPES)
        elif key == "device":
            if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", value):
                raise SpecError(f"{where} must be \"auto\", \"cpu\" or \"cuda[:N]\", not {_show(value)}")
        elif key == "direct":
            if not isinstance(value, bool):
                raise SpecError(f"{where} must be true or false, not {_show(value)}")
        elif key in ("nodes", "out", "parquet"):
            if not isinstance(value, str) or not value:
                raise SpecError(f"{where} must be a non-empty string, not {_show(value)}")
        else:  # pragma: no cover — the checker refuses unknown keys first
            raise SpecError(f"{kind} spec has unknown option {key!r}")
        opts[key] = value
    return InferenceOptions(kind=kind, **{**opts, **fixed})


def inference_keys() -> list[str]:
    """The keys a ``predict`` / ``embed`` section may have: the option fields the daemon does not set."""
    from ..inference_options import InferenceOptions

    return [f.name for f in dataclasses.fields(InferenceOptions) if f.name not in DAEMON_SET["predict"]]


class SpecChecker:
    """Checks specs against the CLI's options and the daemon's allowed roots.

    Args:
        allowed_roots: directories jobs may read and write under; the first is where relative paths start.
    """

    def __init__(self, allowed_roots: list[str | os.PathLike]):
        if not allowed_roots:
            raise ValueError("at least one allowed root")
        self.roots = [Path(os.path.realpath(r)) for r in allowed_roots]
        self.parsers = leaves()
        self._lock = threading.Lock()  # the API checks specs on many threads; the parsers are shared

    # -- paths -------------------------------------------------------------------------------------

    def _inside(self, p: Path) -> bool:
        return root_of(p, self.roots) is not None

    def resolve(self, value: str, what: str) -> Path:
        """A spec path → its real absolute path inside an allowed root (or :class:`SpecError`)."""
        if not isinstance(value, str) or not value:
            raise SpecError(f"{what} must be a non-empty path string")
        if "\0" in value:
            raise SpecError(f"{what} contains a NUL byte; give a plain path")
        p = Path(value)
        if ".." in p.parts:
            raise SpecError(f"{what} {value!r} contains '..'; give a path inside the allowed roots without '..'")
        if not p.is_absolute():
            p = self.roots[0] / p
        if not self._inside(Path(os.path.normpath(p))):
            raise SpecError(f"{what} {value!r} is outside the daemon's allowed roots ({', '.join(map(str, self.roots))}); "
                            "move it under one or start the daemon with --allow")
        real = Path(os.path.realpath(p))
        if not self._inside(real):
            raise SpecError(f"{what} {value!r} leads outside the daemon's allowed roots through a symbolic link (to {real}); "
                            "give a path that stays inside them")
        return real

    # -- the spec ----------------------------------------------------------------------------------

    def check(self, spec: dict) -> dict:
        """Validate ``spec``; returns it normalised (real absolute paths, underscore keys, defaults the daemon sets).

        Raises:
            SpecError: the first problem, in one sentence.
        """
        if not isinstance(spec, dict):
            raise SpecError("a job spec must be a JSON object with dataset and a preprocess and/or train table")
        unknown = sorted(set(spec) - TOP_KEYS)
        if unknown:
            raise SpecError(f"unknown spec key {unknown[0]!r}; a spec has {', '.join(sorted(TOP_KEYS))}")
        for kind in INFERENCE:
            if kind in spec and "train" not in spec:
                raise SpecError(f"the spec has a {kind} table but no train table; {kind} runs the model the job's "
                                "train stage makes, so add a train table")
        if "preprocess" not in spec and "train" not in spec:
            raise SpecError("the spec has neither preprocess nor train; give at least one of them")
        name = spec.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise SpecError("name must be a string of at most 200 characters")
        if "dataset" not in spec:
            raise SpecError("the spec has no dataset; give the dataset directory's path")
        dataset = self.resolve(spec["dataset"], "dataset")
        out: dict = {"dataset": str(dataset), **({"name": name} if name is not None else {})}
        for section in ("preprocess", "train"):
            if section in spec:
                out[section] = self._section(section, spec[section])
        for kind in INFERENCE:
            if kind in spec:
                out[kind] = self._inference(kind, spec[kind])
                if ":" in str((out.get("train") or {}).get("model", "")):
                    raise SpecError(f"the spec has a {kind} table but train.model is a custom model, and exact "
                                    "inference needs a built-in model (sage, gcn or gat); drop the table or the model")
        self._check_artifacts(out, dataset)
        self._check_inference(out, dataset)
        if "train" in out:
            out["train"].setdefault("checkpoint_every", DEFAULT_CHECKPOINT_EVERY)
        return out

    def _section(self, section: str, values) -> dict:
        if not isinstance(values, dict):
            raise SpecError(f"{section} must be a table of `{COMMANDS[section]}` options, not {_show(values)}")
        parser = self.parsers[section]
        known, paths = _options(parser), path_options(parser)
        checked = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key in DAEMON_SET[section]:
                raise SpecError(f"{section}.{raw_key} is set by the daemon ({DAEMON_SET[section][key]}); remove it")
            if key not in known:
                raise SpecError(f"{section} spec has unknown option {raw_key!r}; the options are those of "
                                f"`{COMMANDS[section]} --help`")
            value = _check_value(section, raw_key, value, known[key])
            if key in NAME_OPTIONS and ("/" in value or value.startswith(".") or not value):
                raise SpecError(f"{section}.{raw_key} {value!r} must be a bare name (letters, digits, '-', '_'): "
                                "plans and packs live inside the dataset")
            if key in paths and isinstance(value, str):
                real = self.resolve(value, f"{section}.{raw_key}")
                if not real.exists():
                    raise SpecError(f"{section}.{raw_key} {value!r} does not exist; check the path")
                value = str(real)
            if section == "train" and key == "model":
                value = self._model(value)
            checked[key] = value
        # the command's own parser checks the values (choices, number formats, fanout lists)
        with self._lock:
            parser.parse_args(["DATASET", *section_argv(section, checked, parser)])
        return checked

    def _model(self, value: str) -> str:
        """``train.model``: a built-in name, ``package.module:Class`` as is, or ``path/to/file.py:Class`` with the file
        inside the allowed roots (returned with its real path)."""
        from ..custom_models import check_model_name, split_spec
        from ..store.errors import InputError

        try:
            check_model_name(value)
            if ":" not in value:
                return value
            where, cls, is_file = split_spec(value)
        except InputError as e:
            raise SpecError(f"train.model: {e}") from None
        if not is_file:
            return value
        real = self.resolve(where, "train.model's file")
        if not real.is_file():
            raise SpecError(f"train.model's file {where!r} does not exist; check the path")
        return f"{real}:{cls}"

    def _inference(self, kind: str, values) -> dict:
        """Check a ``predict`` / ``embed`` section: known keys, value types and choices, paths inside the roots."""
        from ..inference_options import NODE_SETS

        if not isinstance(values, dict):
            raise SpecError(f"{kind} must be a table of `diskgraph {kind}` options, not {_show(values)}")
        known = inference_keys()
        checked = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key in DAEMON_SET[kind]:
                raise SpecError(f"{kind}.{raw_key} is set by the daemon ({DAEMON_SET[kind][key]}); remove it")
            if key not in known:
                raise SpecError(f"{kind} spec has unknown option {raw_key!r}; the options are {', '.join(known)} "
                                f"(those of `diskgraph {kind} --help`)")
            if INFERENCE_ONLY.get(key, kind) != kind:
                raise SpecError(f"{kind}.{raw_key} is an option of {INFERENCE_ONLY[key]} only; remove it or move it to "
                                f"an {INFERENCE_ONLY[key]} table")
            checked[key] = value
        opts = inference_options(kind, checked)  # types, sizes, choices
        if "fanouts" in checked and opts.mode != "sampled":
            raise SpecError(f"{kind}.fanouts applies to mode \"sampled\" only (exact mode uses every in-neighbor); "
                            "remove it or set mode = \"sampled\"")
        if opts.mode == "sampled" and opts.storage != "disk":
            raise SpecError(f"{kind}.storage applies to mode \"exact\" only; remove it")
        for key in INFERENCE_PATHS & set(checked):
            real = self.resolve(checked[key], f"{kind}.{key}")
            if real.exists() or real.is_symlink():
                raise SpecError(f"{kind}.{key} {checked[key]!r} already exists and a job never replaces it; choose a "
                                "new path")
            if not real.parent.is_dir():
                raise SpecError(f"{kind}.{key} {checked[key]!r} cannot be created: its parent directory does not exist")
            checked[key] = str(real)
        nodes = checked.get("nodes")
        if nodes is not None and nodes not in NODE_SETS:
            real = self.resolve(nodes, f"{kind}.nodes")
            if not real.is_file():
                raise SpecError(f"{kind}.nodes {nodes!r} is neither {', '.join(NODE_SETS)} nor an existing .npy file "
                                "of node ids; check the path")
            checked["nodes"] = str(real)
        return checked

    def _check_inference(self, spec: dict, dataset: Path) -> None:
        """Outputs distinct from each other and from the dataset; ``layer`` and sampled fanouts fit the model."""
        seen: dict[Path, str] = {}
        for kind in INFERENCE:
            for key in ("out", "parquet"):
                path = (spec.get(kind) or {}).get(key)
                if path is None:
                    continue
                path = Path(path)
                if path == dataset:
                    raise SpecError(f"{kind}.{key} {path} is the dataset; give the output its own new path")
                for other, what in seen.items():
                    if other == path or other in path.parents or path in other.parents:
                        raise SpecError(f"{kind}.{key} {path} and {what} {other} overlap (the same path, or one "
                                        "inside the other); give each output its own new path")
                seen[path] = f"{kind}.{key}"
        layers = self._model_layers(spec, dataset)
        if layers is None:
            return
        for kind in INFERENCE:
            section = spec.get(kind) or {}
            layer = section.get("layer")
            if layer is not None and layer > layers:
                raise SpecError(f"{kind}.layer {layer} is out of range: the model the job trains has {layers} layers "
                                f"(1..{layers}; {layers} is the logits)")
            fanouts = section.get("fanouts")
            if fanouts is not None and len(parse_fanouts(_fanouts_text(fanouts))) != layers:
                raise SpecError(f"{kind}.fanouts {_show(fanouts)} has {len(parse_fanouts(_fanouts_text(fanouts)))} "
                                f"hops but the model the job trains has {layers} layers; give {layers} fanouts")

    def _model_layers(self, spec: dict, dataset: Path) -> int | None:
        """The number of layers of the model the spec's train stage makes, when it can be told before it runs."""
        train, pre = spec.get("train") or {}, spec.get("preprocess")
        if train.get("layers"):
            return int(train["layers"])
        if train.get("reference") and train.get("fanouts"):
            return len(parse_fanouts(_fanouts_text(train["fanouts"])))
        pack = train.get("pack", "default")
        if pre is not None and pack == pre.get("name", "default"):
            parser = self.parsers["preprocess"]
            with self._lock:
                args = parser.parse_args(["DATASET", *section_argv("preprocess", pre, parser)])
            return len(parse_fanouts(args.fanouts))
        try:
            manifest = json.loads((dataset / "packs" / pack / "manifest.json").read_text())
            return len(manifest["plan"]["config"]["fanouts"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # the train stage names the problem

    def _check_artifacts(self, spec: dict, dataset: Path) -> None:
        pre, train = spec.get("preprocess"), spec.get("train")
        raw = pre is not None and any(k in pre for k in RAW_INPUTS)
        name = (pre or {}).get("name", "default")
        if raw:
            if dataset.exists():
                raise SpecError(f"dataset {spec['dataset']} already exists and the preprocess spec imports raw inputs "
                                "into it; choose a new dataset path or drop the raw inputs to add a plan and pack")
            if not dataset.parent.is_dir():
                raise SpecError(f"dataset {spec['dataset']} cannot be created: its parent directory does not exist")
        elif not (dataset / "manifest.json").is_file():
            raise SpecError(f"dataset {spec['dataset']} does not exist (no manifest.json); make it with a preprocess "
                            "spec that has raw inputs, or check the path")
        if pre is not None:
            for kind in ("plans", "packs"):
                if (dataset / kind / name).exists():
                    raise SpecError(f"{kind[:-1]} {name!r} already exists in {dataset}; pick another preprocess.name")
        if train is not None and not (train.get("reference") and train.get("fanouts") and train.get("batch_size")):
            pack = train.get("pack", "default")
            if not (pre is not None and pack == name) and not (dataset / "packs" / pack).is_dir():
                raise SpecError(f"pack {pack!r} does not exist in {dataset} and the spec does not make it; add a "
                                "preprocess table or set train.pack")
