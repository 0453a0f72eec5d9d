"""Use what you trained: the model's output for the graph's nodes, out of core (`diskgraph predict` / `embed`).

>>> import diskgraph
>>> model = diskgraph.load_model("data/cora/runs/default-sage-seed0")      # BlockGNN, eval mode, .card
>>> out = diskgraph.predict("data/cora", run="data/cora/runs/default-sage-seed0", out="cora-pred")
>>> import zarr; g = zarr.open_group(out); g["predictions"][:], g["logits"][:], g["node_ids"][:]  # (per task:
>>> # classification/multilabel: logits + predictions; regression: predictions only; docs/inference.md)
>>> diskgraph.embed("data/cora", run=..., out="cora-emb", layer=1, dtype="float16")

Two modes (docs/inference.md):

* ``exact`` (default): layer-wise inference over every in-neighbor (:mod:`diskgraph.pipeline.layerwise` with the
  model's layers split by :mod:`diskgraph.layer_programs`): layers before the requested one run over every node
  and write the next layer's tables to a scratch directory beside the output, ``.OUT.diskgraph-inference``; a run
  stopped or killed and started again with the same request continues after the last finished layer;
* ``sampled``: the training fanouts, through the offline sampler, the packer and the pipelined loader
  (:mod:`diskgraph.inference_sampled`).

The output is written atomically (:mod:`diskgraph.store.inference_output`): an interrupted run leaves nothing that
opens as a finished output.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .inference_options import EMBED_DTYPES, KINDS, MODES, NODE_SETS, STORAGES, InferenceOptions
from .store.errors import FormatError, InputError
from .store.progress import format_bytes, format_count, log

SCRATCH_TAG = ".diskgraph-inference"
"""The scratch directory of an output ``OUT`` is its hidden sibling ``.OUT.diskgraph-inference``."""


# -- the trained model ----------------------------------------------------------------------------

def read_model_card(run_dir: str | os.PathLike) -> dict:
    """The checked ``best_model.json`` of a run directory (see :func:`diskgraph.pipeline.trainer.write_model_card`).

    Raises:
        InputError: no trained model there, or a card or weights file that does not match its checksum.
    """
    from .pipeline.trainer import BEST_MODEL_NAME, MODEL_CARD_FORMAT, MODEL_CARD_NAME, MODEL_CARD_VERSION
    from .store.checksums import DATA_CHECKSUM, MANIFEST_CHECKSUM_FIELD, data_checksum, manifest_checksum

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} does not exist; pass the --run-dir a `diskgraph train` wrote")
    card_path, weights = run_dir / MODEL_CARD_NAME, run_dir / BEST_MODEL_NAME
    if not weights.is_file():
        raise InputError(f"run directory {run_dir} has no trained model ({BEST_MODEL_NAME}); train it with "
                         "`diskgraph train` (or --resume it) until an epoch ends")
    if not card_path.is_file():
        raise InputError(f"run directory {run_dir} has {BEST_MODEL_NAME} but no {MODEL_CARD_NAME} (what makes the model "
                         "and what it was trained on); it was trained by an older diskgraph, train it again")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError):
        raise InputError(f"{card_path} is not valid JSON; the run directory is damaged, train again") from None
    if not isinstance(card, dict) or card.get("format") != MODEL_CARD_FORMAT:
        raise InputError(f"{card_path} is not a diskgraph model card; pass a run directory `diskgraph train` wrote")
    if card.get("format_version") != MODEL_CARD_VERSION:
        raise InputError(f"{card_path} has format_version {card.get('format_version')}, this diskgraph reads "
                         f"{MODEL_CARD_VERSION}; use the diskgraph that trained it or train again")
    if card.get(MANIFEST_CHECKSUM_FIELD) != manifest_checksum(card):
        raise InputError(f"{card_path} does not match its {MANIFEST_CHECKSUM_FIELD!r} field (it was edited or is "
                         "damaged); train again")
    if not isinstance(card.get("model"), dict):
        raise InputError(f"{card_path} has no model configuration; train again")
    data = weights.read_bytes()
    if data_checksum(data) != card["weights"].get(DATA_CHECKSUM):
        raise InputError(f"{weights} does not match {MODEL_CARD_NAME}'s weights.{DATA_CHECKSUM} (the weights changed or "
                         "are damaged); train again")
    return card


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """The best-validation model of a training run, in eval mode on ``device``.

    Returns:
        For a node-task run a :class:`~diskgraph.models.BlockGNN`; for a link-prediction run (``train --task link``)
        a :class:`~diskgraph.link_models.LinkModel`: its ``encoder`` is the BlockGNN whose last layer's output
        ``[N, H]`` is the node embedding (what exact inference runs, :func:`node_encoder`) and its ``decoder`` the
        :class:`~diskgraph.link_models.PairDecoder` that scores two embeddings (``decoder(h_u, h_v)`` → logits).
        Either way its ``card`` attribute (also the encoder's) is the run's ``best_model.json`` (model configuration,
        the run's identity: dataset checksum, options; epoch and the metric that chose it).

    Raises:
        InputError: no trained model, damaged files (:func:`read_model_card`), or a run of a custom model.
    """
    from .pipeline.trainer import BEST_MODEL_NAME

    card = read_model_card(run_dir)
    cfg = card["model"]
    _refuse_custom(cfg, run_dir)
    weights = Path(run_dir) / BEST_MODEL_NAME
    try:
        model = _build(encoder_config(cfg))
        if is_link(cfg):
            from .link_models import LinkModel

            link = cfg["link"]
            model = LinkModel(model, link["decoder"], link["dim"])
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (KeyError, TypeError, RuntimeError, InputError) as e:
        raise InputError(f"{weights} does not fit the model its card describes "
                         f"({str(e).splitlines()[0][:200]}); train again") from None
    model.card = card
    node_encoder(model).card = card
    return model.to(device).eval()


def _build(cfg: dict):
    """The built-in node model of a card's model configuration (:func:`~diskgraph.models.build_model` arguments)."""
    from .models import build_model

    return build_model(cfg["name"], cfg["in_dim"], cfg["hidden"], cfg["num_classes"], cfg["num_layers"],
                       dropout=cfg["dropout"], heads=cfg["heads"])


def is_link(cfg) -> bool:
    """Whether a card's model configuration is a link-prediction model (an encoder and a decoder)."""
    return isinstance(cfg, dict) and bool(cfg.get("link"))


def encoder_config(cfg: dict) -> dict:
    """The node model's configuration in a card's model configuration: the encoder's for a link model."""
    return (cfg.get("encoder") or {}) if is_link(cfg) else cfg


def node_encoder(model):
    """The node model of what :func:`load_model` returns: a link model's encoder, else the model itself."""
    return model.encoder if getattr(model, "link_model", False) else model


# -- what to infer --------------------------------------------------------------------------------

def select_nodes(ds, spec: str) -> np.ndarray | None:
    """The sorted, unique int64 node ids ``--nodes spec`` names (see :data:`~diskgraph.inference_options.NODE_SETS`);
    None for ``all`` (every node, without an array of N ids).

    Raises:
        InputError: an unknown split, no labels for ``unlabelled``, or a node file that is not a 1-D integer
            ``.npy`` array of ids in ``0..N-1``.
    """
    n = ds.num_nodes
    if spec == "all":
        return None
    if spec == "unlabelled":
        if ds.labels is None:
            raise InputError(f"--nodes unlabelled needs labels, and dataset {ds.path} has none; use --nodes all")
        out = []
        for s in range(0, n, 1 << 24):  # (a class id < 0, a NaN regression row; a multilabel dataset has none)
            out.append(s + np.flatnonzero(~ds.labelled_mask(slice(s, s + (1 << 24)))))
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)
    if spec in NODE_SETS:
        if spec not in ds.splits:
            have = ", ".join(sorted(ds.splits)) or "none"
            raise InputError(f"--nodes {spec}: dataset {ds.path} has no {spec} split (it has: {have}); name another or "
                             "pass a .npy file of node ids")
        ds.check_array(f"splits/{spec}")
        return np.unique(np.asarray(ds.splits[spec], dtype=np.int64))
    path = Path(spec)
    if path.suffix != ".npy":
        raise InputError(f"--nodes {spec!r} is neither one of {', '.join(NODE_SETS)} nor a .npy file of node ids")
    try:
        ids = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"--nodes file {path} does not exist; check the path") from None
    except (OSError, ValueError) as e:
        raise InputError(f"--nodes file {path} is not a readable .npy array ({str(e).splitlines()[0][:120]}); save the "
                         "ids with numpy.save") from None
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise InputError(f"--nodes file {path} holds a {ids.dtype} array of shape {ids.shape}; it must be a 1-D "
                         "integer array of node ids")
    if len(ids) == 0:
        raise InputError(f"--nodes file {path} is empty; give at least one node id")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise InputError(f"--nodes file {path} holds node id {bad} outside 0..{n - 1} (dataset {ds.path} has {n} "
                         "nodes); pass ids of this dataset")
    return np.unique(np.asarray(ids, dtype=np.int64))


def _check_options(opts: InferenceOptions) -> None:
    if opts.kind not in KINDS:
        raise InputError(f"unknown inference kind {opts.kind!r}; choose {' or '.join(KINDS)}")
    if not opts.run:
        raise InputError("no run directory given; pass --run RUN_DIR (the --run-dir of `diskgraph train`)")
    if not opts.out:
        raise InputError("no output directory given; pass --out OUT")
    if opts.mode not in MODES:
        raise InputError(f"--mode {opts.mode} is unknown; choose {' or '.join(MODES)}")
    if opts.storage not in STORAGES:
        raise InputError(f"--storage {opts.storage} is unknown; choose one of {', '.join(STORAGES)}")
    if opts.dtype not in EMBED_DTYPES:
        raise InputError(f"--dtype {opts.dtype} is unknown; choose {' or '.join(EMBED_DTYPES)}")
    if opts.kind == "predict" and opts.dtype != "float32":
        raise InputError("--dtype applies to embed only (predict writes float32 outputs and its predictions); drop it")
    if opts.kind == "predict" and opts.layer is not None:
        raise InputError("--layer applies to embed only (predict writes the last layer's logits); drop it or use embed")
    if opts.mode == "exact" and (opts.fanouts is not None):
        raise InputError("--fanouts applies to --mode sampled only (exact mode uses every in-neighbor); drop it")
    if opts.mode == "sampled" and opts.storage != "disk":
        raise InputError("--storage applies to --mode exact only; drop it")
    if opts.memory_budget is not None and opts.memory_budget <= 0:
        raise InputError("--memory-budget must be positive")


def _refuse_custom(cfg, run) -> None:
    """Refuse a run trained with ``--model module:Class`` (also as a link model's encoder): exact inference needs a
    built-in model's layer programs."""
    node = encoder_config(cfg) if isinstance(cfg, dict) else cfg
    if isinstance(node, dict) and node.get("custom"):
        raise InputError(f"run {run} trained the custom model {node['custom']}, and exact inference (load_model, predict, "
                         "embed, score) needs a built-in model (sage, gcn or gat); run your model on "
                         "diskgraph.PackedLoader batches instead")


def _check_binding(ds, card: dict, run: Path) -> None:
    from .store.binding import dataset_identity

    recorded = (card.get("identity") or {}).get("dataset")
    actual = dataset_identity(ds)
    if recorded != actual:
        raise InputError(f"run {run} was trained on another dataset: best_model.json identity.dataset is {recorded}, "
                         f"but {ds.path} is {actual}; pass the dataset it was trained on, or train on this one")
    cfg = card["model"]
    _refuse_custom(cfg, run)
    cfg = encoder_config(cfg)
    if cfg.get("in_dim") != ds.feature_dim:
        raise InputError(f"run {run}'s model reads {cfg.get('in_dim')}-wide features but {ds.path} has "
                         f"{ds.feature_dim}; pass the dataset it was trained on")


def scratch_dir(out: str | os.PathLike) -> Path:
    """Where a run writing ``out`` keeps its intermediate tables (removed when it finishes)."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}{SCRATCH_TAG}"


# -- running it -----------------------------------------------------------------------------------

def run_inference(dataset: str | os.PathLike, opts: InferenceOptions) -> dict:
    """Run one inference request and write its output; returns the summary (also the ``--log-json`` line).

    Raises:
        InputError: bad input (one sentence; see docs/inference.md for each).
        diskgraph.pipeline.trainer.StopRequested: ``opts.stop`` was set; completed layers stay in the scratch
            directory and the same request continues from them.
    """
    from .store.atomic import AtomicDirectory
    from .store.importer import default_memory_budget
    from .store.inference_output import (INFERENCE_FORMAT, OutputWriter, embed_columns, open_output, predict_columns,
                                         write_parquet)

    _check_options(opts)
    t0 = time.perf_counter()
    run = Path(opts.run)
    ds, model, card = open_run(dataset, run)
    link = is_link(card["model"])
    kind = opts.kind
    if link and kind == "predict":  # no per-node class: a link model's output for a node is its embedding
        log.info("predict: run %s trained link prediction; writing the node embeddings its decoder scores (as embed "
                 "does; score node pairs with `diskgraph score --pairs FILE`)", run)
        kind = "embed"
    model = node_encoder(model)
    num_layers = model.num_layers
    default_layer = num_layers if link else max(1, num_layers - 1)  # a link run's: the embedding its decoder scores
    layer = num_layers if kind == "predict" else (opts.layer if opts.layer is not None else default_layer)
    if not 1 <= layer <= num_layers:
        last = "the embedding its decoder scores" if link else "the logits"
        raise InputError(f"--layer {layer} is out of range: the model of {run} has {num_layers} layer(s); give 1.."
                         f"{num_layers} ({num_layers} = {last})")
    out = Path(opts.out)
    atomic = AtomicDirectory(out, overwrite=opts.overwrite, option="--out", kind=INFERENCE_FORMAT)
    atomic.check()
    if opts.parquet and Path(opts.parquet).exists() and not opts.overwrite:
        raise InputError(f"--parquet file {opts.parquet} already exists; choose another path or pass --overwrite")
    nodes = select_nodes(ds, opts.nodes)
    count = ds.num_nodes if nodes is None else len(nodes)
    if not count:
        raise InputError(f"--nodes {opts.nodes} names no node of {ds.path}; choose another node set")
    budget = int(opts.memory_budget or default_memory_budget())
    width = model.config["num_classes"] if layer == num_layers else _layer_width(model, layer)
    task = None if link else run_task(card, ds, run)  # link prediction has no label task: see link_manifest
    columns = predict_columns(task) if kind == "predict" else embed_columns(width, opts.dtype)
    scratch = scratch_dir(out)
    from .store.binding import dataset_identity

    identity = {"dataset": dataset_identity(ds), "model": card.get("checksum"), "final_layer": layer,
                "mode": opts.mode, "storage": opts.storage}
    if opts.memory_budget is None:  # a resumed run keeps the default budget its start chose (the layout depends on it)
        budget = _started_budget(scratch, identity) or budget
    identity["memory_budget"] = budget
    stop = _stop_check(opts.stop)
    log.info("%s: %s of %s nodes (%s, layer %d of %d) of %s with %s into %s", kind, opts.mode,
             format_count(count), opts.nodes, layer, num_layers, ds.path, run, out)
    with atomic as tmp:
        writer = OutputWriter(tmp, count, columns)
        emit = _emitter(writer, kind, opts.dtype, task)
        try:
            if opts.mode == "exact":
                stats = _run_exact(ds, model, nodes, layer, opts.storage, budget, scratch, identity, emit, stop)
            else:
                stats = _run_sampled(ds, model, card, nodes, layer, opts, budget, scratch, emit)
        except BaseException:
            writer.abort()
            raise
        summary = {"summary": True, "kind": kind, "mode": opts.mode,
                   "storage": opts.storage if opts.mode == "exact" else None, "nodes": int(count),
                   "node_set": opts.nodes, "layer": layer, "num_layers": num_layers, "memory_budget": budget,
                   "out": str(out), **stats}
        summary["seconds"] = round(time.perf_counter() - t0, 4)
        writer.finish({"kind": kind, "task": task, "mode": opts.mode, "layer": layer, "dtype": opts.dtype,
            "run": {"path": str(run.absolute()), "model_checksum": card.get("checksum"), "epoch": card.get("epoch"),
                    "best_metric": (card.get("best") or {}).get("metric"),
                    "best_value": (card.get("best") or {}).get("value"),
                    **({"val_acc": card["val_acc"]} if card.get("val_acc") is not None else {})},
            "model": card["model"], "dataset": {"path": str(Path(dataset).absolute()), "identity": identity["dataset"]},
            "nodes": opts.nodes, "summary": {k: v for k, v in summary.items() if k not in ("summary", "layers")},
            **({"link": link_manifest(card, layer, num_layers)} if link else {})})
    shutil.rmtree(scratch, ignore_errors=True)
    if opts.parquet:
        summary["parquet_bytes"] = write_parquet(open_output(out), opts.parquet)
    if opts.log_json:
        with open(opts.log_json, "a") as f:
            f.write(json.dumps(summary) + "\n")
    amp = summary.get("read_amplification")
    log.info("%s: %s nodes in %.2f s, read %s%s, peak RSS %s; wrote %s", kind, format_count(count),
             summary["seconds"], format_bytes(summary.get("read_bytes", 0)),
             f" (amplification {amp:.3f}, {summary.get('table_passes')} table passes)" if amp else "",
             format_bytes(summary.get("peak_rss_bytes", 0)), out)
    return summary


def open_run(dataset: str | os.PathLike, run: str | os.PathLike):
    """``(dataset, model, card)``: the opened dataset and the run's model (:func:`load_model`), checked to belong
    together (the run was trained on this dataset's contents and reads its feature width).

    Raises:
        InputError: a dataset without features, a run without a usable model, or a run of another dataset.
    """
    from .store.dataset import open_dataset

    ds = open_dataset(dataset)
    if ds.features is None:
        raise InputError(f"dataset {ds.path} has no features; a model needs them")
    model = load_model(run)
    _check_binding(ds, model.card, Path(run))
    return ds, model, model.card


def link_manifest(card: dict, layer: int, num_layers: int) -> dict:
    """The ``link`` entry of an output of a link-prediction run: the rows are the encoder's embeddings, not class
    logits (the output records no ``task``). ``decoder`` scores a pair of them when ``scored_by_decoder`` (the
    encoder's last layer, the default): ``dot``, ``distmult`` or ``mlp`` (:mod:`diskgraph.link_models`)."""
    link = card["model"]["link"]
    return {"decoder": link.get("decoder"), "dim": link.get("dim"), "encoder_layers": int(num_layers),
            "scored_by_decoder": int(layer) == int(num_layers)}


def _started_budget(scratch: Path, identity: dict) -> int | None:
    """The memory budget of the unfinished run of this request that left ``scratch``, if there is one."""
    from .pipeline.layerwise import STATE_NAME

    try:
        saved = json.loads((scratch / STATE_NAME).read_text()).get("identity") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if all(saved.get(k) == v for k, v in json.loads(json.dumps(identity)).items()):
        budget = saved.get("memory_budget")
        return int(budget) if isinstance(budget, int) and budget > 0 else None
    return None


def _layer_width(model, layer: int) -> int:
    """Output width of GNN layer ``layer`` (1-based) of ``model``."""
    from .layer_programs import layer_programs

    return layer_programs(model)[layer - 1].out_width


def _stop_check(event):
    from .pipeline.trainer import StopRequested

    def check() -> None:
        if event is not None and event.is_set():
            raise StopRequested()
    return check


def run_task(card: dict, ds, run) -> dict:
    """The task of the run whose model card is ``card`` (:func:`~diskgraph.store.inference_output.output_task`): the
    card's ``task`` (a card without one, written before label kinds, is classification), with the target shape of
    the dataset ``ds`` it was trained on for regression ([] for ``[N]`` targets: predictions ``[M]``).

    Raises:
        InputError: a task this diskgraph does not know, or one that disagrees with the model's output width.
    """
    from .store.inference_output import output_task
    from .store.label_kinds import TASKS

    recorded = card.get("task") or {}
    kind = recorded.get("kind", "classification") if isinstance(recorded, dict) else None
    width = (card.get("model") or {}).get("num_classes")
    if kind not in TASKS:
        raise InputError(f"run {run}'s best_model.json records task {kind!r}, which this diskgraph does not know; "
                         "use the diskgraph that trained it")
    num_outputs = recorded.get("num_outputs", width)
    target_shape = ds.manifest.get("target_shape") if getattr(ds, "task", None) == kind else None
    try:
        if num_outputs != width:
            raise ValueError(f"it records {num_outputs} outputs, the model has {width}")
        return output_task(kind, num_outputs, target_shape)
    except ValueError as e:
        raise InputError(f"run {run}'s best_model.json task {recorded} does not fit its model ({e}); train "
                         "again") from None


def _emitter(writer, kind: str, dtype: str, task: dict):
    """``emit(node_ids, rows)`` that appends rows to the output in the columns of ``kind`` (for predict, the arrays
    of ``task``: :func:`~diskgraph.store.inference_output.predict_rows`)."""
    from .store.inference_output import predict_rows

    np_dtype = np.dtype(dtype)

    def emit(ids: np.ndarray, rows: torch.Tensor) -> None:
        rows = rows.detach().to("cpu", torch.float32)
        ids = np.asarray(ids, dtype=np.int64)
        if kind == "predict":
            writer.append(node_ids=ids, **predict_rows(task, rows.numpy()))
        else:
            writer.append(node_ids=ids, embeddings=rows.numpy().astype(np_dtype))
    return emit


def _run_exact(ds, model, nodes, layer, storage, budget, scratch, identity, emit, stop) -> dict:
    from .layer_programs import layer_programs
    from .pipeline.layerwise import Table, Topology, read_state, run_layerwise

    if storage != "ram":
        if scratch.exists() and read_state(scratch, identity) is None:
            shutil.rmtree(scratch)  # another request's (or an unfinished first layer's) tables
        scratch.mkdir(parents=True, exist_ok=True)
    if storage == "ram":
        features = Table.in_ram(ds.features)
    elif storage == "mmap":
        features = Table("mmap", array=ds.features)
    else:
        features = Table.on_disk(ds.features)
    topo = Topology(ds.array("topology/indptr"), ds.array("topology/indices"), ds.num_nodes)
    selected = nodes
    try:
        result = run_layerwise(layer_programs(model), features, topo, final_layer=layer, selected=selected,
                               activation=model.activation, emit=emit, budget=budget,
                               scratch=None if storage == "ram" else scratch, identity=identity, stop=stop,
                               table_kind="mmap" if storage == "mmap" else "disk")
    finally:
        features.close()
    return result.summary()


def _run_sampled(ds, model, card, nodes, layer, opts, budget, scratch, emit) -> dict:
    from .inference_sampled import run_sampled
    from .train import resolve_device

    identity = card.get("identity") or {}
    fanouts = opts.fanouts or identity.get("--fanouts")
    batch_size = opts.batch_size or identity.get("--batch-size") or 1024
    if not fanouts:
        raise InputError(f"run {opts.run} records no training fanouts; pass --fanouts")
    if len(fanouts) != model.num_layers:
        raise InputError(f"--fanouts {','.join(map(str, fanouts))} has {len(fanouts)} hop(s) but the model has "
                         f"{model.num_layers} layers; give one fanout per layer")
    device = resolve_device(opts.device)
    model.to(device)
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    if nodes is None:
        nodes = np.arange(ds.num_nodes, dtype=np.int64)
    stats = run_sampled(ds, model, nodes, layer=layer, fanouts=list(fanouts), batch_size=int(batch_size),
                        seed=opts.seed, scratch=scratch, memory_budget=budget, device=device, direct=opts.direct,
                        emit=emit, stop=opts.stop)
    return {**stats, "fanouts": list(fanouts), "batch_size": int(batch_size)}


def predict(dataset: str | os.PathLike, run: str | os.PathLike, out: str | os.PathLike, **options) -> Path:
    """Write the model's predictions for ``nodes`` (default all) to ``out``; returns ``out``. What they are depends
    on the run's task (docs/inference.md): classification ``logits`` [M, C] and ``predictions`` int64 [M]; multilabel
    ``logits`` [M, C] and ``predictions`` uint8 [M, C] (logit > 0); regression ``predictions`` float32 [M] or [M, T].

    ``options`` are :class:`~diskgraph.inference_options.InferenceOptions` fields (``nodes``, ``mode``,
    ``memory_budget``, ``parquet``, ``overwrite``, …).
    """
    run_inference(dataset, InferenceOptions(kind="predict", run=str(run), out=str(out), **options))
    return Path(out)


def embed(dataset: str | os.PathLike, run: str | os.PathLike, out: str | os.PathLike, layer: int | None = None,
          **options) -> Path:
    """Write the output of GNN layer ``layer`` (default: the last hidden layer) for ``nodes`` to ``out``; returns
    ``out``. ``options`` as for :func:`predict`, plus ``dtype="float16"``."""
    run_inference(dataset, InferenceOptions(kind="embed", run=str(run), out=str(out), layer=layer, **options))
    return Path(out)


__all__ = ["FormatError", "InferenceOptions", "embed", "encoder_config", "is_link", "load_model", "node_encoder",
           "open_run", "predict", "read_model_card", "run_inference", "scratch_dir", "select_nodes"]
