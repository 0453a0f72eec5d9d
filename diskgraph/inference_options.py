"""The options of `diskgraph predict` / `diskgraph embed` / `diskgraph score`, declared once (CLI, config files,
daemon, Python API).

An inference request names a dataset, a trained run directory and an output directory::

    InferenceOptions(kind="predict", run="data/cora/runs/default-sage-seed0", out="cora-pred")
    InferenceOptions(kind="embed", run=..., out=..., layer=1, dtype="float16")
    ScoreOptions(run="runs/cora-link", pairs="pairs.csv", out="scores.parquet")   # a link-prediction run
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("predict", "embed")
"""``predict``: the predictions of the run's task (:data:`~diskgraph.store.inference_output.PREDICT_ARRAYS`: logits
[M, C] float32 + predictions [M] int64 for classification); ``embed``: embeddings [M, H] of layer ``layer``."""

MODES = ("exact", "sampled")
"""``exact``: layer-wise inference over every in-neighbor (out of core); ``sampled``: the training fanouts through
the offline sampler, packer and pipelined loader."""

STORAGES = ("disk", "ram", "mmap")
"""Where exact mode keeps the tables a layer gathers from: ``disk`` (out of core: streamed in sequential slices, the
default), ``ram`` (everything loaded into memory; the in-memory reference) or ``mmap`` (the dataset's features read
through ``np.memmap``, rows gathered at random: the baseline a memory-mapped PyG/DGL layer-wise inference gives)."""

NODE_SETS = ("all", "train", "val", "test", "unlabelled")
"""Named node sets of ``--nodes``; anything else is a path to a ``.npy`` file of node ids."""

EMBED_DTYPES = ("float32", "float16")


@dataclass
class InferenceOptions:
    """One inference request (the flags of ``diskgraph predict`` / ``embed``).

    Attributes:
        kind: ``predict`` or ``embed``.
        run: the training run directory (its ``best_model.pt`` and ``best_model.json``).
        out: the output directory (a Zarr v3 group with ``manifest.json``), written atomically.
        nodes: ``all``, ``train``, ``val``, ``test``, ``unlabelled`` or a ``.npy`` file of int node ids; the output
            rows are these nodes in ascending id order, each once (``node_ids`` says which).
        layer: ``embed`` only: the GNN layer whose output is written, 1..L (default L-1 when L > 1, else 1; for a
            link-prediction run L, the encoder's output: the embedding its decoder scores); layer L is the logits.
        dtype: ``embed`` only: ``float32`` or ``float16`` embeddings.
        mode: ``exact`` or ``sampled``.
        memory_budget: bytes exact mode may hold (None: half the available memory, at most 4 GiB).
        storage: exact mode's tables: ``disk``, ``ram`` or ``mmap`` (see :data:`STORAGES`).
        fanouts, batch_size: ``sampled`` only (default: the run's); ``batch_size`` is also exact mode's progress unit.
        parquet: also write the output as a Parquet table at this path.
        device: ``auto``, ``cpu`` or ``cuda[:N]`` (sampled mode's compute; exact mode runs on the CPU).
        overwrite: replace an existing output of the same kind.
        log_json: append the JSON summary line here.
        seed: sampled mode's sampling seed.
        direct: read packed extents / tables with O_DIRECT where possible.
        stop: an event that stops the run when set (the daemon's graceful shutdown); not an option.
    """

    kind: str = "predict"
    run: str | None = None
    out: str | None = None
    nodes: str = "all"
    layer: int | None = None
    dtype: str = "float32"
    mode: str = "exact"
    memory_budget: int | None = None
    storage: str = "disk"
    fanouts: list[int] | None = None
    batch_size: int | None = None
    parquet: str | None = None
    device: str = "auto"
    overwrite: bool = False
    log_json: str | None = None
    seed: int = 0
    direct: bool = True
    stop: object = field(default=None, repr=False, compare=False)


SCORE_FORMATS = (".npy", ".csv", ".parquet")
"""``diskgraph score --out`` suffixes: ``.npy`` (the scores float32 [P]), ``.csv`` and ``.parquet`` (columns ``src``,
``dst``, ``score``, ``probability``)."""


@dataclass
class ScoreOptions:
    """One pair-scoring request (the flags of ``diskgraph score``) on a link-prediction run.

    Attributes:
        run: the training run directory of ``train --task link``.
        pairs: the node pairs: ``.npy`` int array [P, 2] (or [2, P] when P != 2), or ``.csv`` / ``.txt`` with two
            integer columns (an optional header line).
        out: the scores file; its suffix chooses the format (:data:`SCORE_FORMATS`); written atomically.
        memory_budget: bytes the exact layer-wise inference may hold (None: as for predict/embed).
        storage: the node tables of the layer-wise inference: ``disk``, ``ram`` or ``mmap`` (see :data:`STORAGES`).
        overwrite: replace an existing ``out`` file.
        log_json: append the JSON summary line here.
        stop: an event that stops the run when set; not an option.
    """

    run: str | None = None
    pairs: str | None = None
    out: str | None = None
    memory_budget: int | None = None
    storage: str = "disk"
    overwrite: bool = False
    log_json: str | None = None
    stop: object = field(default=None, repr=False, compare=False)
