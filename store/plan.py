"""Sampling plans: every minibatch's multi-layer neighborhood, sampled before training.

A plan lives in ``DATASET/plans/NAME/``::

    manifest.json        format diskgraph.plan, the sampling config, per-split counts, the dataset's checksums
    train.arrow          Arrow IPC file, one record batch (one row) per minibatch, epochs in order
    val.arrow, test.arrow
    counts/{split}       Zarr int32 [N]: how many minibatches of the split read each node as an input

Each row holds (``L`` = number of hops = GNN layers)::

    checksum     uint64       XXH3-64 of the row's other columns (:func:`~diskgraph.store.checksums.row_checksum`),
                              verified every time the row is read
    epoch        int32
    batch        int32        index within the epoch
    seeds        list<int64>  the minibatch's seed nodes (global ids) = input_nodes[:layer_sizes[0]]
    input_nodes  list<int64>  global ids of every node the minibatch reads; local id = position
    layer_sizes  list<int64>  [n_0, n_1, ..., n_L]: nodes within 0..h hops (n_0 = seeds, n_L = inputs)
    hop{h}_indptr   list<int32>  h = 1..L: CSC of hop h over its n_{h-1} destination nodes
    hop{h}_indices  list<int32>  local ids (< n_h) of each destination's sampled in-neighbors

Hop ``h`` is a bipartite block whose destination nodes are the first ``n_{h-1}``
local ids and whose source nodes are the first ``n_h`` (destination nodes
first, as in DGL's blocks). The first GNN layer runs on hop ``L`` (input nodes
→ the nodes within ``L-1`` hops), the last on hop 1 (→ the seeds).

A link-prediction plan (``config.task == "link"``, format version 3) has the same columns, its ``seeds``
being the sorted unique endpoints of the minibatch's positive edges and negatives, plus::

    link_src     list<int32>  [P]      position in ``seeds`` of each positive edge's source
    link_dst     list<int32>  [P]      position in ``seeds`` of each positive edge's destination
    link_neg     list<int32>  [P * K]  positions in ``seeds`` of each positive's K negative destinations, row-major
    link_k       int32                 K (train: ``config.negatives``; val/test: ``config.eval_negatives``)

all inside the row checksum (:class:`LinkTargets`; :mod:`diskgraph.sampler.link_sampler`).

The manifest binds the plan to the dataset it was sampled from (``dataset``: node and edge counts,
sha256 of the topology arrays and of the sampled splits) and carries its own checksum. Version 2
added the row checksums; version-1 plans are refused (sample them again). Version 3 added link plans;
node plans are still written as version 2, and readers accept 2 and 3.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from .arrow_files import checksummed_record_batch, decode_row, open_ipc_file
from .checksums import array_sha256
from .errors import FormatError, InputError
from .files import AppendFile
from .manifest import read_manifest, write_manifest
from .zarr_arrays import RawArray, write_array, write_group

PLAN_FORMAT = "diskgraph.plan"
PLAN_VERSION = 3
"""The newest plan format version this diskgraph reads and writes (2: row checksums, manifest checksum, binding to
the sampled splits; 3: link-prediction plans). Readers accept :data:`MIN_PLAN_VERSION` .. PLAN_VERSION."""
MIN_PLAN_VERSION = 2
NODE_PLAN_VERSION = 2
"""Node plans are written as version 2 (unchanged), so plans and packs made before version 3 stay valid."""
LINK_PLAN_VERSION = 3
"""Link-prediction plans (``config.task == "link"``) are written as version 3."""
PLAN_TASKS = ("node", "link")

SPLITS = ("train", "val", "test")


def shard_name(name: str, rank: int, world_size: int) -> str:
    """The name of share ``rank`` of ``world_size`` of plan (or pack) ``name``: ``NAME.rankR-of-W``
    (``preprocess sample/pack --shard R/W``; data-parallel training finds each rank's pack by it)."""
    return f"{name}.rank{rank}-of-{world_size}"


@dataclass
class LinkTargets:
    """The supervision of a link-prediction minibatch, as positions into its ``seeds``.

    Attributes:
        src: int64 [P], position in ``seeds`` of each positive edge's source node.
        dst: int64 [P], position in ``seeds`` of each positive edge's destination node.
        neg: int64 [P, K], positions in ``seeds`` of each positive's K negative destination nodes (with shared
            negatives every row is the same).
    """

    src: np.ndarray
    dst: np.ndarray
    neg: np.ndarray

    @property
    def num_positives(self) -> int:
        """P."""
        return int(self.src.shape[0])

    @property
    def k(self) -> int:
        """K, negatives per positive."""
        return int(self.neg.shape[1])

    def targets(self) -> np.ndarray:
        """int64 [P, 2 + K]: columns (src position, dst position, K negative positions) — the loaders' ``y``."""
        return np.concatenate([self.src.reshape(-1, 1), self.dst.reshape(-1, 1), self.neg.reshape(len(self.src), -1)],
                              axis=1).astype(np.int64, copy=False)


@dataclass
class SampledMinibatch:
    """One sampled minibatch (see the module docstring for the layout).

    Attributes:
        epoch, batch: position in the plan.
        input_nodes: int64 [n_L], global ids; position = local id.
        layer_sizes: int64 [L+1], n_0 (seeds) ... n_L (inputs).
        hop_indptr: L arrays, int32 [n_{h-1} + 1], for hops h = 1..L.
        hop_indices: L arrays, int32 [e_h], local source ids of hop h.
        link: a link-prediction minibatch's positives and negatives (positions into ``seeds``), else None.
    """

    epoch: int
    batch: int
    input_nodes: np.ndarray
    layer_sizes: np.ndarray
    hop_indptr: list[np.ndarray]
    hop_indices: list[np.ndarray]
    link: LinkTargets | None = None

    @property
    def seeds(self) -> np.ndarray:
        """int64 [n_0]: the seed nodes (global ids)."""
        return self.input_nodes[: int(self.layer_sizes[0])]

    @property
    def num_hops(self) -> int:
        """L, the number of hops (GNN layers)."""
        return len(self.hop_indptr)

    def blocks(self) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
        """Blocks in GNN-layer order: ``(num_src, num_dst, indptr, indices)`` from hop L down to hop 1."""
        out = []
        for h in range(self.num_hops, 0, -1):
            out.append((int(self.layer_sizes[h]), int(self.layer_sizes[h - 1]), self.hop_indptr[h - 1],
                        self.hop_indices[h - 1]))
        return out


LINK_FIELDS = [pa.field("link_src", pa.list_(pa.int32())), pa.field("link_dst", pa.list_(pa.int32())),
               pa.field("link_neg", pa.list_(pa.int32())), pa.field("link_k", pa.int32())]


def plan_schema(num_hops: int, task: str = "node") -> pa.Schema:
    """The Arrow schema of a plan file with ``num_hops`` hops (``task="link"``: with the link columns last)."""
    fields = [pa.field("checksum", pa.uint64()), pa.field("epoch", pa.int32()), pa.field("batch", pa.int32()),
              pa.field("seeds", pa.list_(pa.int64())), pa.field("input_nodes", pa.list_(pa.int64())),
              pa.field("layer_sizes", pa.list_(pa.int64()))]
    for h in range(1, num_hops + 1):
        fields += [pa.field(f"hop{h}_indptr", pa.list_(pa.int32())), pa.field(f"hop{h}_indices", pa.list_(pa.int32()))]
    if task == "link":
        fields += LINK_FIELDS
    return pa.schema(fields)


def plan_columns(mb: SampledMinibatch) -> list[np.ndarray]:
    """The values of a plan row's columns after ``checksum``, in schema order (scalars as 1-element arrays)."""
    cols = [np.array([mb.epoch], np.int32), np.array([mb.batch], np.int32), np.asarray(mb.seeds, np.int64),
            np.asarray(mb.input_nodes, np.int64), np.asarray(mb.layer_sizes, np.int64)]
    for h in range(mb.num_hops):
        cols += [np.asarray(mb.hop_indptr[h], np.int32), np.asarray(mb.hop_indices[h], np.int32)]
    if mb.link is not None:
        lk = mb.link
        cols += [np.asarray(lk.src, np.int32), np.asarray(lk.dst, np.int32), np.asarray(lk.neg, np.int32).reshape(-1),
                 np.array([lk.k], np.int32)]
    return cols


def plan_record_batch(mb: SampledMinibatch, schema: pa.Schema) -> pa.RecordBatch:
    """One minibatch as the plan row the sampler writes (its checksum first)."""
    return checksummed_record_batch(plan_columns(mb), schema)


def read_minibatch(reader: pa.ipc.RecordBatchFileReader, i: int, num_hops: int, path: Path,
                   task: str = "node") -> SampledMinibatch:
    """Row ``i`` of the plan file ``path`` (open as ``reader``), checked against its checksum (``task="link"``: with
    its :class:`LinkTargets`).

    Raises:
        FormatError: the row cannot be decoded or does not match its checksum.
    """
    c = decode_row(reader, i, f"plan file {path}", "sample the plan again")
    link = None
    if task == "link":
        a = 5 + 2 * num_hops
        src, dst, neg, k = c[a], c[a + 1], c[a + 2], int(c[a + 3][0])
        if k < 1 or neg.size != src.size * k or dst.size != src.size:
            raise FormatError(f"plan file {path} row {i} has link columns of inconsistent lengths; the file is "
                              "damaged, sample the plan again")
        link = LinkTargets(src=src.astype(np.int64), dst=dst.astype(np.int64),
                           neg=neg.astype(np.int64).reshape(src.size, k))
    return SampledMinibatch(epoch=int(c[0][0]), batch=int(c[1][0]), input_nodes=c[3], layer_sizes=c[4],
                            hop_indptr=c[5::2][:num_hops], hop_indices=c[6::2][:num_hops], link=link)


class PlanSplitWriter:
    """Append minibatches of one split to its Arrow IPC file and count node reads.

    Memory: one int32 counter per node plus the minibatch being written.
    """

    def __init__(self, path: Path, num_nodes: int, num_hops: int, task: str = "node"):
        self.path = path
        self.num_hops = num_hops
        self.task = task
        self.schema = plan_schema(num_hops, task)
        self._file = AppendFile(path)
        self._sink = pa.PythonFile(self._file, mode="w")
        self._writer = pa.ipc.new_file(self._sink, self.schema)
        self.counts = np.zeros(num_nodes, dtype=np.int32)
        self.minibatches = 0
        self.input_nodes = 0
        self.sampled_edges = 0
        self.layer_totals = np.zeros(num_hops + 1, dtype=np.int64)

    def write(self, mb: SampledMinibatch) -> None:
        """Append one minibatch (its input nodes must be distinct)."""
        if mb.num_hops != self.num_hops:
            raise ValueError(f"minibatch has {mb.num_hops} hops, plan has {self.num_hops}")
        if (mb.link is not None) != (self.task == "link"):
            raise ValueError(f"a {'link' if mb.link is not None else 'node'} minibatch in a {self.task} plan")
        self._writer.write_batch(plan_record_batch(mb, self.schema))
        self.sampled_edges += sum(len(x) for x in mb.hop_indices)
        self.counts[mb.input_nodes] += 1
        self.minibatches += 1
        self.input_nodes += len(mb.input_nodes)
        self.layer_totals += np.asarray(mb.layer_sizes, dtype=np.int64)

    def close(self) -> None:
        """Finish the IPC file (writes its footer) and sync it."""
        self._writer.close()
        self._file.close()

    def abort(self) -> None:
        """Close without finishing (the plan directory is about to be removed)."""
        self._file.abort()


class Plan:
    """A plan directory, opened read-only.

    Attributes:
        path, manifest: the directory and its parsed manifest.
        config: the sampling config (``fanouts``, ``batch_size``, ``seed``, ``epochs``, …).
        num_nodes: node count of the dataset the plan was sampled from.
        num_hops: L.
        splits: names of the splits the plan holds.
        task: ``"node"`` or ``"link"`` (``config.task``; link rows carry :class:`LinkTargets`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest = read_manifest(self.path, PLAN_FORMAT, PLAN_VERSION, min_version=MIN_PLAN_VERSION,
                                      checksum_since=MIN_PLAN_VERSION)
        try:
            self.config = self.manifest["config"]
            self.task = self.config.get("task", "node")
            if self.task not in PLAN_TASKS or (self.task == "link" and self.manifest["format_version"] < LINK_PLAN_VERSION):
                raise FormatError(f"{self.path / 'manifest.json'} has config.task {self.task!r}, which this format "
                                  f"version does not know; sample the plan again")
            self.num_nodes = int(self.manifest["dataset"]["num_nodes"])
            self.num_hops = int(self.manifest["num_hops"])
            self.split_info: dict[str, dict] = self.manifest["splits"]
            self.splits = list(self.split_info)
            self.schema = plan_schema(self.num_hops, self.task)
            # every split is opened now (memory maps): a plan replaced while a run reads it does not change under it
            self._readers = {s: open_ipc_file(self.path / f"{s}.arrow", int(self.split_info[s]["minibatches"]),
                                              "plan file", "sample the plan again", self.schema,
                                              int(self.split_info[s]["file_bytes"])) for s in self.splits}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise FormatError(f"{self.path / 'manifest.json'} lacks required fields; the plan is damaged, sample it again") from None

    def __repr__(self) -> str:
        return f"Plan({str(self.path)!r}, fanouts={self.config.get('fanouts')}, splits={self.splits})"

    def _reader(self, split: str) -> pa.ipc.RecordBatchFileReader:
        if split not in self.split_info:
            raise InputError(f"plan {self.path} has no {split!r} split (it has {', '.join(self.splits)})")
        return self._readers[split]

    def num_minibatches(self, split: str) -> int:
        """Minibatches of ``split`` over all presampled epochs."""
        return int(self.split_info[split]["minibatches"])

    def minibatches_per_epoch(self, split: str) -> int:
        """Minibatches of ``split`` in one epoch."""
        return int(self.split_info[split]["minibatches_per_epoch"])

    def num_epochs(self, split: str) -> int:
        """Presampled epochs of ``split`` (1 for val/test)."""
        return int(self.split_info[split]["epochs"])

    def minibatch(self, split: str, i: int) -> SampledMinibatch:
        """Minibatch ``i`` of ``split`` (rows in epoch order), arrays zero-copy from the memory-mapped file.

        Raises:
            FormatError: the row cannot be decoded or does not match its checksum (the file is damaged).
        """
        n = self.num_minibatches(split)
        if not 0 <= i < n:
            raise IndexError(f"minibatch {i} of {split} is out of range (0..{n - 1})")
        return read_minibatch(self._reader(split), i, self.num_hops, self.path / f"{split}.arrow", self.task)

    def input_nodes(self, split: str, i: int) -> np.ndarray:
        """int64 global ids of minibatch ``i``'s input nodes (zero-copy; the row's checksum is verified)."""
        return self.minibatch(split, i).input_nodes

    def verify(self, dataset=None) -> list[str]:
        """See :func:`verify_plan`."""
        return verify_plan(self, dataset)

    def counts(self, split: str) -> np.ndarray:
        """int32 [N]: how many of the split's minibatches read each node (memory map)."""
        return RawArray(self.path / "counts" / split).memmap()


def _check_minibatch(mb: SampledMinibatch, num_nodes: int) -> str | None:
    """The first broken invariant of one minibatch, or None."""
    sizes = np.asarray(mb.layer_sizes)
    if len(sizes) != mb.num_hops + 1 or np.any(np.diff(sizes) < 0) or sizes[-1] != len(mb.input_nodes):
        return "layer_sizes do not match the hops and input nodes"
    ids = mb.input_nodes
    if ids.size and (ids.min() < 0 or ids.max() >= num_nodes):
        return "an input node id is outside the graph"
    if np.unique(ids).size != ids.size:
        return "input nodes repeat"
    for h in range(1, mb.num_hops + 1):
        ptr, idx = mb.hop_indptr[h - 1], mb.hop_indices[h - 1]
        if len(ptr) != sizes[h - 1] + 1 or ptr[0] != 0 or ptr[-1] != len(idx) or np.any(np.diff(ptr) < 0):
            return f"hop {h} indptr is inconsistent"
        if idx.size and (idx.min() < 0 or idx.max() >= sizes[h]):
            return f"hop {h} names a source outside its {sizes[h]} nodes"
    if mb.link is not None:
        lk, n0 = mb.link, int(sizes[0])
        for name, pos in (("link_src", lk.src), ("link_dst", lk.dst), ("link_neg", lk.neg)):
            if pos.size and (pos.min() < 0 or pos.max() >= n0):
                return f"{name} names a position outside the {n0} seeds"
        seeds = ids[:n0]
        if n0 > 1 and np.any(seeds[1:] <= seeds[:-1]):
            return "the seeds of a link minibatch are not sorted and distinct"
    return None


def verify_plan(plan: "Plan", dataset=None) -> list[str]:
    """Re-read every minibatch (checksums included) and check the plan's invariants, its counts and (given the
    dataset) that it was sampled from that dataset; returns the problems found."""
    from .binding import plan_problem

    problems = [p for p in [plan_problem(plan, dataset) if dataset is not None else None] if p]
    for split in plan.splits:
        try:
            counts = np.zeros(plan.num_nodes, dtype=np.int32)
            for i in range(plan.num_minibatches(split)):
                mb = plan.minibatch(split, i)
                bad = _check_minibatch(mb, plan.num_nodes)
                if bad:
                    problems.append(f"{split} minibatch {i}: {bad}")
                    break
                counts[mb.input_nodes] += 1
            else:
                if not np.array_equal(counts, plan.counts(split)):
                    problems.append(f"counts/{split} differ from the minibatches' input nodes")
                elif array_sha256(counts) != plan.split_info[split].get("counts_sha256"):
                    problems.append(f"counts/{split}: sha256 differs from the manifest's counts_sha256")
        except FormatError as e:
            problems.append(str(e))
    return problems


def open_plan(path: str | os.PathLike) -> Plan:
    """Open the plan directory at ``path``.

    Raises:
        FormatError: not a plan, damaged, or of a newer format version.
    """
    return Plan(path)


def write_plan_manifest(tmp: Path, writers: dict[str, PlanSplitWriter], config: dict, dataset_info: dict,
                        seconds: float, per_epoch: dict[str, int], epochs: dict[str, int]) -> dict:
    """Write the counts arrays and the plan manifest into ``tmp``; returns the manifest (format version 3 for a
    link plan, ``config["task"] == "link"``, else 2)."""
    write_group(tmp / "counts")
    splits = {}
    num_hops = 0
    for name, w in writers.items():
        _, sha = write_array(tmp / "counts" / name, w.counts, "int32")
        num_hops = w.num_hops
        mb = max(w.minibatches, 1)
        splits[name] = {
            "file": f"{name}.arrow", "minibatches": w.minibatches, "minibatches_per_epoch": per_epoch[name],
            "epochs": epochs[name], "input_nodes": int(w.input_nodes), "sampled_edges": int(w.sampled_edges),
            "mean_layer_sizes": [round(float(x) / mb, 2) for x in w.layer_totals],
            "distinct_nodes_read": int((w.counts > 0).sum()), "counts_sha256": sha,
            "file_bytes": (tmp / f"{name}.arrow").stat().st_size,
        }
    version = LINK_PLAN_VERSION if config.get("task") == "link" else NODE_PLAN_VERSION
    return write_manifest(tmp, PLAN_FORMAT, version, {
        "config": config, "num_hops": num_hops, "dataset": dataset_info, "splits": splits,
        "seconds": round(seconds, 3),
    })
