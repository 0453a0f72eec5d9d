"""Score node pairs with a link-prediction run: `diskgraph score` and :func:`score_pairs`.

>>> import diskgraph, numpy as np
>>> scores = diskgraph.score_pairs("data/cora-link", "runs/cora-link", np.array([[0, 633], [0, 1862]]))
>>> scores.dtype, scores.shape                      # float32 [P]: the decoder's logits, in the given pair order
(dtype('float32'), (2,))

A pair ``(u, v)`` is scored as training scored it: ``decoder(h_u, h_v)``, the run's
:class:`~diskgraph.link_models.PairDecoder` (``dot``, ``distmult`` or ``mlp``) on the encoder's output embeddings
``h`` (its last layer, no activation). The embeddings are exact (every in-neighbour, layer-wise and out of core, as
``diskgraph embed``: :func:`diskgraph.inference._run_exact`); the encoder's last layer is computed for the pairs'
endpoints only (the layers before it run over every node: their outputs are its inputs). The probability is
``sigmoid(score)`` (what the ``bce`` loss trained; with ``softmax`` or ``margin`` only the order of the scores means
something).

Pairs files (``--pairs``): ``.npy`` integer array ``[P, 2]`` (one pair per row; ``[2, P]`` is read too when P != 2),
or ``.csv`` / ``.txt`` with two integer columns, comma- or whitespace-separated, an optional header line and ``#``
comments. Outputs (``--out``, by suffix): ``.npy`` the scores float32 ``[P]``; ``.csv`` and ``.parquet`` columns
``src`` int64, ``dst`` int64, ``score`` float32, ``probability`` float32; rows in the pairs' order, written to a
temporary sibling and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .inference_options import SCORE_FORMATS, STORAGES, ScoreOptions
from .store.errors import InputError
from .store.progress import format_bytes, format_count, log

PAIR_CHUNK = 1 << 16
"""Pairs decoded (and written) at a time."""

ENDPOINTS_NAME = "score-endpoints.npy"
"""In the scratch directory: the endpoints' embeddings, when they are too many to hold (see :func:`endpoint_embeddings`)."""


# -- pairs ----------------------------------------------------------------------------------------

def read_pairs(path: str | os.PathLike, num_nodes: int, option: str = "--pairs") -> np.ndarray:
    """The node pairs of a pairs file, checked against a graph of ``num_nodes`` nodes: int64 ``[P, 2]``.

    Raises:
        InputError: a missing or unreadable file, another suffix, a wrong shape, non-integer values, no pair, or an
            id outside ``0..num_nodes-1``.
    """
    from .store.sources.npy import open_npy, require_file

    p = require_file(path, "pairs", option)
    label = f"pairs file {p}"
    suffix = p.suffix.lower()
    if p.is_dir():
        raise InputError(f"{label} is a directory; pass a .npy, .csv or .txt file of node pairs to {option}")
    if suffix == ".npy":
        a = open_npy(p, "pairs", option)
        if a.dtype.kind not in "iu":
            raise InputError(f"{label} holds {a.dtype} values; node ids must be integers: save them with "
                             "numpy.save(path, pairs.astype('int64'))")
        if a.ndim == 2 and a.shape[1] == 2:
            pairs = np.asarray(a, dtype=np.int64)
        elif a.ndim == 2 and a.shape[0] == 2:
            pairs = np.asarray(a, dtype=np.int64).T
        else:
            raise InputError(f"{label} holds an array of shape {tuple(a.shape)}; pairs must be an integer array of "
                             "shape [P, 2], one (src, dst) pair per row")
    elif suffix in (".csv", ".txt"):
        pairs = _read_text(p, label)
    else:
        raise InputError(f"{label} is neither .npy nor .csv/.txt; save the pairs as a [P, 2] integer .npy array or a "
                         "two-column CSV")
    return check_pairs(pairs, num_nodes, label)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _read_text(p: Path, label: str) -> np.ndarray:
    """int64 ``[P, 2]`` of a CSV / whitespace text file of two integer columns (a first line that is not numbers is
    a header)."""
    try:
        with open(p, encoding="utf-8") as f:
            first = ""
            for line in f:
                if line.strip() and not line.lstrip().startswith("#"):
                    first = line
                    break
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{label} cannot be read as text ({e.__class__.__name__}); pass a two-column CSV of node "
                         "ids") from None
    delimiter = "," if "," in first else None
    tokens = [t.strip() for t in (first.split(",") if delimiter else first.split())]
    header = bool(tokens) and not all(_is_number(t) for t in tokens if t)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ("input contained no data": refused below as empty)
            a = np.loadtxt(p, delimiter=delimiter, dtype=np.int64, ndmin=2, comments="#",
                           skiprows=_line_of(p, first) + 1 if header else 0)
    except (ValueError, OverflowError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__
        raise InputError(f"{label} is not two columns of integer node ids ({reason}); write one src,dst pair of "
                         "integers per line") from None
    if a.size == 0:
        return np.zeros((0, 2), np.int64)
    if a.shape[1] != 2:
        raise InputError(f"{label} has {a.shape[1]} column(s); write two integer columns, src and dst, one pair per "
                         "line")
    return a


def _line_of(p: Path, first: str) -> int:
    """The 0-based line number of the header line ``first`` (after blank and comment lines)."""
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line == first:
                return i
    return 0


def check_pairs(pairs, num_nodes: int, label: str = "pairs") -> np.ndarray:
    """``pairs`` as a C-ordered int64 ``[P, 2]`` array, checked: integers, at least one pair, ids in ``0..N-1``.

    Raises:
        InputError: naming ``label``, the offending id and its row, and the valid range.
    """
    a = np.asarray(pairs)
    if a.dtype.kind not in "iu":
        raise InputError(f"{label} holds {a.dtype} values; node ids must be integers (e.g. pairs.astype('int64'))")
    if a.ndim != 2 or a.shape[1] != 2:
        raise InputError(f"{label} has shape {tuple(a.shape)}; pairs must be [P, 2], one (src, dst) pair per row")
    if a.shape[0] == 0:
        raise InputError(f"{label} holds no pairs; give at least one pair of node ids")
    a = np.ascontiguousarray(a, dtype=np.int64)
    bad = np.flatnonzero(((a < 0) | (a >= num_nodes)).any(axis=1))
    if bad.size:
        row = int(bad[0])
        node = int(a[row, 0] if not 0 <= a[row, 0] < num_nodes else a[row, 1])
        raise InputError(f"{label} holds node id {node} (pair {row}) outside the valid range 0..{num_nodes - 1} "
                         f"({num_nodes} nodes); pass ids of the dataset the run was trained on")
    return a


# -- embeddings and scores ------------------------------------------------------------------------

def endpoint_embeddings(ds, encoder, card: dict, nodes: np.ndarray, *, storage: str, budget: int,
                        scratch: Path | None, stop) -> tuple[np.ndarray, dict]:
    """The encoder's output embeddings of ``nodes`` (sorted unique int64 ``[U]``), exact: float32 ``[U, H]``, row i
    for ``nodes[i]``; and the layer-wise run's summary.

    Held in memory when they take at most 1/8 of ``budget`` (the layer-wise run gets the rest), else a ``.npy`` file
    in ``scratch`` (memory-mapped).
    """
    from .inference import _run_exact
    from .store.binding import dataset_identity

    layer = encoder.num_layers
    width = int(encoder.config["num_classes"])
    need = len(nodes) * width * 4
    in_ram = scratch is None or need <= budget // 8
    held = {"rows": np.empty((len(nodes), width), np.float32) if in_ram else None, "filled": 0}

    def emit(ids: np.ndarray, rows: torch.Tensor) -> None:
        if held["rows"] is None:  # (the layer-wise run has prepared the scratch directory by now)
            held["rows"] = np.lib.format.open_memmap(scratch / ENDPOINTS_NAME, mode="w+", dtype=np.float32,
                                                     shape=(len(nodes), width))
        pos = np.searchsorted(nodes, np.asarray(ids, dtype=np.int64))
        held["rows"][pos] = rows.detach().to("cpu", torch.float32).numpy()
        held["filled"] += len(pos)

    run_budget = budget - need if in_ram and scratch is not None else budget
    identity = {"dataset": dataset_identity(ds), "model": card.get("checksum"), "final_layer": layer, "mode": "exact",
                "storage": storage, "memory_budget": int(budget), "layer_budget": int(run_budget)}
    stats = _run_exact(ds, encoder, nodes, layer, storage, int(run_budget), scratch, identity, emit, stop)
    if held["filled"] != len(nodes):
        raise RuntimeError(f"layer-wise inference emitted {held['filled']} of {len(nodes)} endpoint embeddings")
    return held["rows"], stats


def decode_pairs(decoder, embeddings: np.ndarray, nodes: np.ndarray, pairs: np.ndarray,
                 chunk: int = PAIR_CHUNK) -> np.ndarray:
    """``decoder(h_u, h_v)`` for every pair ``(u, v)`` of ``pairs`` (int64 ``[P, 2]``), where ``h`` of node
    ``nodes[i]`` is ``embeddings[i]`` (float32 ``[U, H]``): float32 ``[P]`` in the pairs' order."""
    out = np.empty(len(pairs), np.float32)
    dtype = next(iter(decoder.parameters()), torch.empty(0, dtype=torch.float32)).dtype
    with torch.no_grad():
        for s in range(0, len(pairs), chunk):
            block = pairs[s:s + chunk]
            hu = torch.from_numpy(np.asarray(embeddings[np.searchsorted(nodes, block[:, 0])])).to(dtype)
            hv = torch.from_numpy(np.asarray(embeddings[np.searchsorted(nodes, block[:, 1])])).to(dtype)
            out[s:s + len(block)] = decoder(hu, hv).to(torch.float32).numpy()
    return out


def _open_link_run(dataset, run):
    """``(ds, model, card)`` of a link-prediction run (:func:`diskgraph.inference.open_run`), refusing a node run."""
    from .inference import is_link, read_model_card, open_run

    card = read_model_card(run)
    if not is_link(card.get("model")):
        raise InputError(f"run {run} trained a node task (its best_model.json model has no link decoder), and score "
                         "needs a `diskgraph train --task link` run; use `diskgraph predict` for its node outputs")
    return open_run(dataset, run)


def _scores(ds, model, card, pairs, storage, budget, scratch, stop) -> tuple[np.ndarray, dict]:
    nodes = np.unique(pairs)
    emb, stats = endpoint_embeddings(ds, model.encoder, card, nodes, storage=storage, budget=budget, scratch=scratch,
                                     stop=stop)
    scores = decode_pairs(model.decoder, emb, nodes, pairs)
    return scores, {**stats, "endpoints": int(len(nodes))}


def score_pairs(dataset: str | os.PathLike, run: str | os.PathLike, pairs, *, memory_budget: int | None = None,
                storage: str = "disk", scratch: str | os.PathLike | None = None) -> np.ndarray:
    """The scores of node ``pairs`` under a link-prediction run's model: float32 ``[P]``, the decoder's logits
    (``sigmoid`` of them: probabilities), in the given order.

    Args:
        dataset: the dataset the run was trained on (first, as for :func:`~diskgraph.inference.predict`).
        run: the run directory of ``diskgraph train --task link``.
        pairs: int array-like ``[P, 2]`` of node ids, or the path of a pairs file (see the module docstring).
        memory_budget: bytes the layer-wise inference may hold (default: half the available memory, at most 4 GiB).
        storage: ``disk`` (out of core), ``ram`` or ``mmap``.
        scratch: where the intermediate tables go (a new directory under it, removed at the end; default: the
            system's temporary directory).

    Raises:
        InputError: a node-task run, a run of another dataset, or bad pairs (one sentence).
    """
    from .inference import _stop_check
    from .store.importer import default_memory_budget

    if storage not in STORAGES:
        raise InputError(f"storage {storage!r} is unknown; choose one of {', '.join(STORAGES)}")
    ds, model, card = _open_link_run(dataset, Path(run))
    pairs = (read_pairs(pairs, ds.num_nodes) if isinstance(pairs, (str, os.PathLike))
             else check_pairs(pairs, ds.num_nodes))
    budget = int(memory_budget or default_memory_budget())
    work = None if storage == "ram" else Path(tempfile.mkdtemp(prefix=".diskgraph-score-", dir=scratch))
    try:
        scores, _ = _scores(ds, model, card, pairs, storage, budget, work, _stop_check(None))
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return scores


# -- the command ----------------------------------------------------------------------------------

def _check_out(out: Path, overwrite: bool) -> str:
    """The format of ``--out`` (its suffix), refusing before any work an output that cannot be written."""
    from .store.atomic import check_writable

    fmt = out.suffix.lower()
    if fmt not in SCORE_FORMATS:
        raise InputError(f"--out {out} has suffix {out.suffix or '(none)'!r}; end it with .npy (scores only), .csv or "
                         ".parquet (src, dst, score, probability)")
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name ending in {', '.join(SCORE_FORMATS)}")
    if os.path.lexists(out) and not overwrite:
        raise InputError(f"--out file {out} already exists; choose another --out or pass --overwrite to replace it")
    check_writable(out, "--out")
    return fmt


def write_scores(out: str | os.PathLike, pairs: np.ndarray, scores: np.ndarray) -> int:
    """Write ``scores`` (float32 ``[P]``) of ``pairs`` (int64 ``[P, 2]``) to ``out`` in the format of its suffix, under
    a temporary sibling renamed at the end (an interrupted write leaves nothing at ``out``); returns its bytes."""
    from .store.files import write_atomic

    out = Path(out)
    fmt = out.suffix.lower()
    prob = torch.sigmoid(torch.from_numpy(scores)).numpy().astype(np.float32)
    if fmt == ".npy":
        def write(f):
            np.save(f, scores.astype(np.float32, copy=False))
    elif fmt == ".csv":
        def write(f):
            f.write(b"src,dst,score,probability\n")
            for s in range(0, len(pairs), PAIR_CHUNK):
                e = min(s + PAIR_CHUNK, len(pairs))
                lines = (f"{u},{v},{a:.9g},{b:.9g}" for (u, v), a, b in
                         zip(pairs[s:e].tolist(), scores[s:e].tolist(), prob[s:e].tolist()))
                f.write(("\n".join(lines) + "\n").encode())
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("score", pa.float32()),
                            ("probability", pa.float32())])

        def write(f):
            writer = pq.ParquetWriter(pa.PythonFile(f, mode="w"), schema)
            try:
                for s in range(0, len(pairs), PAIR_CHUNK << 4):
                    e = min(s + (PAIR_CHUNK << 4), len(pairs))
                    writer.write_table(pa.table([pairs[s:e, 0], pairs[s:e, 1], scores[s:e], prob[s:e]],
                                                schema=schema))
            finally:
                writer.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, write)
    return out.stat().st_size


def run_score(dataset: str | os.PathLike, opts: ScoreOptions) -> dict:
    """Run one ``diskgraph score`` request and write its ``--out`` file; returns the summary (the ``--log-json``
    line). Intermediate tables go to the scratch directory beside ``--out`` (:func:`diskgraph.inference.scratch_dir`);
    a stopped run continues from its finished layers when run again.

    Raises:
        InputError: bad input (one sentence).
        diskgraph.pipeline.trainer.StopRequested: ``opts.stop`` was set.
    """
    from .inference import _stop_check, scratch_dir
    from .store.importer import default_memory_budget

    t0 = time.perf_counter()
    if not opts.run:
        raise InputError("no run directory given; pass --run RUN_DIR (the --run-dir of `diskgraph train --task link`)")
    if not opts.pairs:
        raise InputError("no pairs given; pass --pairs FILE (.npy [P, 2] or a two-column .csv of node ids)")
    if not opts.out:
        raise InputError("no output file given; pass --out FILE.npy, FILE.csv or FILE.parquet")
    if opts.storage not in STORAGES:
        raise InputError(f"--storage {opts.storage} is unknown; choose one of {', '.join(STORAGES)}")
    if opts.memory_budget is not None and opts.memory_budget <= 0:
        raise InputError("--memory-budget must be positive")
    out = Path(opts.out)
    _check_out(out, opts.overwrite)
    run = Path(opts.run)
    ds, model, card = _open_link_run(dataset, run)
    pairs = read_pairs(opts.pairs, ds.num_nodes)
    budget = int(opts.memory_budget or default_memory_budget())
    scratch = None if opts.storage == "ram" else scratch_dir(out)
    if opts.memory_budget is None and scratch is not None:  # a resumed run keeps its start's default budget
        budget = _resumed_budget(scratch) or budget
    log.info("score: %s pairs of %s with %s (%s decoder) into %s", format_count(len(pairs)), ds.path, run,
             card["model"]["link"].get("decoder"), out)
    scores, stats = _scores(ds, model, card, pairs, opts.storage, budget, scratch, _stop_check(opts.stop))
    nbytes = write_scores(out, pairs, scores)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = {"summary": True, "kind": "score", "mode": "exact", "storage": opts.storage, "pairs": int(len(pairs)),
               "decoder": card["model"]["link"].get("decoder"), "layer": model.encoder.num_layers,
               "memory_budget": budget, "out": str(out), "out_bytes": nbytes, **stats}
    summary["seconds"] = round(time.perf_counter() - t0, 4)
    if opts.log_json:
        with open(opts.log_json, "a") as f:
            f.write(json.dumps(summary) + "\n")
    log.info("score: %s pairs (%s endpoints) in %.2f s, read %s, peak RSS %s; wrote %s", format_count(len(pairs)),
             format_count(stats["endpoints"]), summary["seconds"], format_bytes(summary.get("read_bytes", 0)),
             format_bytes(summary.get("peak_rss_bytes", 0)), out)
    return summary


def _resumed_budget(scratch: Path) -> int | None:
    """The memory budget of the unfinished score run that left ``scratch`` (its layer-wise state), if any: a resumed
    run with the default budget keeps the one its start chose (the layout of the tables depends on it)."""
    from .pipeline.layerwise import STATE_NAME

    try:
        saved = json.loads((scratch / STATE_NAME).read_text()).get("identity") or {}
    except (OSError, ValueError, AttributeError):
        return None
    budget = saved.get("memory_budget")
    return int(budget) if isinstance(budget, int) and budget > 0 else None


__all__ = ["check_pairs", "decode_pairs", "endpoint_embeddings", "read_pairs", "run_score", "score_pairs",
           "write_scores"]
