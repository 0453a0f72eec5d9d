"""What ``preprocess pack --max-blowup B`` will do, predicted from the sampled minibatches: which cold rows it packs
and which it leaves in the feature table ("table rows"), the extents' bytes, the table's page reads and requests,
and the disk budget's largest ``B``.

The packer's own grouping is used (:class:`~diskgraph.store.packer._TablePages`, :func:`~diskgraph.store.packer._padded`,
:func:`~diskgraph.store.packer._split_table`): each minibatch's cold ids are grouped by their 4 KiB page of the feature
table; packing every group of fewer than ``t`` rows costs ``totals[t]`` padded bytes over all minibatches; ``k*`` is
the largest ``t`` with ``totals[t] <= B x feature bytes``; groups of exactly ``k*`` rows are packed while the rest of
the budget (``slack``) lasts, in plan order; larger groups are table rows.

* **Every minibatch sampled** (and no split-half mix): the packer's two passes are replayed exactly — ``totals`` from
  every minibatch, then :func:`_split_table` in plan order — so extents, table rows and page reads equal the pack's.
* **A sample**: ``totals`` is the weighted sum over the sampled minibatches (each stands for ``minibatches / sampled``
  of its split; with a cache, the in-sample and split-half cold ids mixed as :func:`~diskgraph.capacity.workload.cold_rows`
  mixes them). The slack goes, as in pass B, to the minibatches in plan order (train, then val, then test): walking
  the sample in that order, a sampled minibatch's ``weight`` minibatches pack all their ``k*``-row groups while the
  slack lasts (a share of them where it runs out), the later ones only the groups that fit in the padding of their
  extent's last page (:func:`_split_table` with no slack). Which split gets the slack matters: a training epoch
  reads the table rows of the training minibatches only.

Reads of the table rows (:mod:`~diskgraph.store.table_reader`): its own :func:`~diskgraph.store.table_reader.plan_runs`
turns a minibatch's table ids into requests (pages closer than 4 apart merged, at most 1 MiB each) and the bytes they
fetch; the time of a minibatch's table reads is ``requests / the reader's requests per second + the bytes beyond a
page per request / sequential bandwidth``. The rate is the calibration's run of the reader itself (``table_read_rps``:
on a 2-core VM its per-request Python work and the GIL, not the disk's 4 KiB reads with 8 in flight, set it), or
``--disk-queue-iops``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..store.direct_io import ALIGNMENT
from ..store.packer import _padded, _split_table, _TablePages
from ..store.table_reader import GAP_PAGES, MAX_RUN_BYTES, plan_runs
from .workload import ColdRows, Workload

DEFAULT_MAX_BLOWUP = 10.0
"""``preprocess pack``'s default ``--max-blowup``."""


@dataclass
class Bounded:
    """The prediction for one ``max_blowup`` (None: unbounded). Per split, float arrays [k] over the sampled
    minibatches: ``extent_rows``, ``padded`` (extent bytes), ``table_rows``, ``table_pages`` (4 KiB pages of the table
    the rows lie in, the packer's count), ``table_requests`` and ``table_bytes`` (what the reader issues and fetches).
    Totals (over every minibatch of every split, as the pack manifest counts them): ``packed_bytes``,
    ``unbounded_bytes`` (every cold row packed), ``table_rows_total``, ``table_pages_total``; ``budget`` (bytes), ``kstar``
    (None: every cold row fits), ``fraction`` (share of the ``k*``-row groups packed), ``method``."""

    max_blowup: float | None
    budget: int | None
    feature_bytes: int
    unbounded_bytes: float
    packed_bytes: float
    kstar: int | None
    fraction: float
    extent_rows: dict[str, np.ndarray]
    padded: dict[str, np.ndarray]
    table_rows: dict[str, np.ndarray]
    table_pages: dict[str, np.ndarray]
    table_requests: dict[str, np.ndarray]
    table_bytes: dict[str, np.ndarray]
    table_rows_total: float = 0.0
    table_pages_total: float = 0.0
    method: str = ""
    exact: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def binding(self) -> bool:
        return self.kstar is not None

    @property
    def blowup(self) -> float:
        return self.packed_bytes / self.feature_bytes if self.feature_bytes else 0.0


def budget_bytes(max_blowup: float | None, feature_bytes: int) -> int | None:
    """The packer's budget: ``floor(B x feature bytes)`` (None: unbounded)."""
    return None if max_blowup is None else int(np.floor(max_blowup * feature_bytes))


def _reads(ids: np.ndarray, pages: _TablePages, max_run_pages: int) -> tuple[int, int, int]:
    """(4 KiB pages, requests, bytes fetched) of reading the sorted table rows ``ids`` (the packer's page count; the
    reader's runs and their bytes, the chunk file's end aside)."""
    if not ids.shape[0]:
        return 0, 0, 0
    runs = plan_runs(np.ascontiguousarray(ids, np.int64), pages.cr, pages.rb, GAP_PAGES, max_run_pages)
    return pages.reads(ids), int(runs.shape[0]), int(runs[:, 2].sum()) * ALIGNMENT


class _Minibatch:
    """One sampled minibatch's cold ids (as rows of the planned table) grouped by page: rows and padded bytes of
    packing the groups of fewer than ``t`` rows, for every ``t``."""

    def __init__(self, ids: np.ndarray, pages: _TablePages):
        self.ids = ids
        self.sizes = pages.groups(ids)
        self.top = int(self.sizes.max()) if self.sizes.shape[0] else 0

    def rows_below(self, t_max: int) -> np.ndarray:
        """int64 [t_max + 1]: rows in groups of fewer than ``t`` rows, ``t = 0..t_max``."""
        per = np.bincount(self.sizes, weights=self.sizes, minlength=t_max + 1)[:t_max + 1].astype(np.int64)
        out = np.zeros(t_max + 1, np.int64)
        out[1:] = np.cumsum(per)[:-1]
        return out

    def table_ids(self, kstar: int, inclusive: bool) -> np.ndarray:
        """Ids of the groups of more than ``kstar`` rows (``inclusive``: of ``kstar`` rows or more)."""
        big = self.sizes >= kstar if inclusive else self.sizes > kstar
        return self.ids[np.repeat(big, self.sizes)]


def predict_bounded(w: Workload, cr: ColdRows, max_blowup: float | None) -> Bounded:
    """What ``preprocess pack --max-blowup max_blowup`` packs and leaves in the table (see the module docstring)."""
    rb = w.row_bytes
    pages = _TablePages(w.table_chunk_rows, rb)
    max_run_pages = max(MAX_RUN_BYTES // ALIGNMENT, -(-rb // ALIGNMENT) + 1)
    feature_bytes = int(w.num_nodes * rb)
    budget = budget_bytes(max_blowup, feature_bytes)
    variants = [(1.0 if cr.cross_ids is None else cr.in_sample_weight, cr.ids)]
    if cr.cross_ids is not None:
        variants.append((1.0 - cr.in_sample_weight, cr.cross_ids))
    mbs = [(a, {name: [_Minibatch(w.table_ids(ids), pages) for ids in per] for name, per in var.items()})
           for a, var in variants]
    t_max = 1 + max([m.top for _, var in mbs for per in var.values() for m in per], default=0)
    totals = np.zeros(t_max + 1, np.float64)
    below: list[dict[str, list[np.ndarray]]] = []
    for a, var in mbs:
        b = {}
        for name, per in var.items():
            weight = w.splits[name].weight
            b[name] = [_padded(m.rows_below(t_max), rb) for m in per]
            for p in b[name]:
                totals += a * weight * p
        below.append(b)
    unbounded = float(totals[-1])
    splits = list(w.splits)
    zeros = {n: np.zeros(w.splits[n].k) for n in splits}
    unbounded_padded = {n: sum(a * np.array([p[-1] for p in b[n]], np.float64) for (a, _), b in zip(mbs, below))
                        for n in splits}
    unbounded_rows = {n: sum(a * np.array([m.ids.shape[0] for m in var[n]], np.float64) for a, var in mbs)
                      for n in splits}
    exact = w.exhaustive and len(variants) == 1
    how_sample = ("every minibatch sampled: the packer's passes replayed" if exact else
                  "from the sampled minibatches, each standing for minibatches / sampled of its split"
                  + ("; the in-sample and split-half cold rows mixed as the hit rate" if len(variants) > 1 else ""))
    if budget is None or unbounded <= budget:
        return Bounded(max_blowup, budget, feature_bytes, unbounded, unbounded, None, 1.0, unbounded_rows,
                       unbounded_padded, dict(zeros), dict(zeros), dict(zeros), dict(zeros), 0.0, 0.0,
                       ("unbounded" if budget is None else
                        f"every cold row fits B x feature table ({unbounded / max(feature_bytes, 1):.3g}x <= {max_blowup:g}x)")
                       + f"; {how_sample}", exact)
    kstar = int(np.searchsorted(totals[1:], budget, side="right"))  # totals[1] = 0 <= budget: at least 1
    slack = budget - totals[kstar]
    step = totals[kstar + 1] - totals[kstar] if kstar + 1 <= t_max else 0.0
    frac = float(min(1.0, max(0.0, slack / step))) if step > 0 else 0.0
    out = {k: {n: np.zeros(w.splits[n].k) for n in splits}
           for k in ("extent_rows", "padded", "table_rows", "table_pages", "table_requests", "table_bytes")}
    if exact:
        # the packer's pass B, in plan order (splits in the plan's order, rows in plan order)
        slack_b = int(budget - int(totals[kstar]))
        for n in splits:
            for i, m in enumerate(mbs[0][1][n]):
                if not m.ids.shape[0]:
                    continue
                keep, slack_b = _split_table(m.ids, pages, kstar, slack_b)
                tab = m.ids[~keep]
                kept = int(keep.sum())
                pg, rq, by = _reads(tab, pages, max_run_pages)
                for key, v in (("extent_rows", kept), ("padded", _padded(kept, rb)), ("table_rows", tab.shape[0]),
                               ("table_pages", pg), ("table_requests", rq), ("table_bytes", by)):
                    out[key][n][i] = v
        how = "exact: " + how_sample
    else:
        # pass B spends the slack on the k*-row groups in plan order: the first minibatches (train, then val, then test)
        # pack all of theirs, the later ones only those that fit in the padding of their extent's last page. Replayed
        # on the sample in plan order, each sampled minibatch standing for `weight` of its split's
        for a, var in mbs:
            left = float(slack)
            for n in splits:
                weight = w.splits[n].weight
                for i, m in enumerate(var[n]):
                    if not m.ids.shape[0]:
                        continue
                    full, cost = _split_table(m.ids, pages, kstar, 1 << 62)
                    cost = (1 << 62) - cost
                    free, _ = _split_table(m.ids, pages, kstar, 0)
                    f = 1.0 if cost <= 0 else min(1.0, max(0.0, left / (weight * cost)))
                    left -= f * weight * cost
                    for share, keep in ((f, full), (1.0 - f, free)):
                        if share <= 0:
                            continue
                        tab = m.ids[~keep]
                        kept = int(keep.sum())
                        pg, rq, by = _reads(tab, pages, max_run_pages)
                        for key, v in (("extent_rows", kept), ("padded", _padded(kept, rb)),
                                       ("table_rows", tab.shape[0]), ("table_pages", pg), ("table_requests", rq),
                                       ("table_bytes", by)):
                            out[key][n][i] += a * share * v
        how = how_sample + (f"; the budget's slack ({frac:.0%} of the groups of exactly k* rows) spent in plan order, "
                            "as the packer does")
    tot = {k: sum(float(out[k][n].sum()) * w.splits[n].weight for n in splits) for k in out}
    how = (f"--max-blowup {max_blowup:g}: budget {budget:,} bytes; a minibatch's cold rows that share a 4 KiB table page "
           f"with {kstar} or more of its others ({kstar - 1} where the budget runs out) stay in the feature table; "
           + how)
    return Bounded(max_blowup, budget, feature_bytes, unbounded, min(tot["padded"], float(budget)), kstar, frac,
                   out["extent_rows"], out["padded"], out["table_rows"], out["table_pages"], out["table_requests"],
                   out["table_bytes"], tot["table_rows"], tot["table_pages"], how, exact)


def table_read_seconds(bd: Bounded, name: str, disk: dict, overridden: bool = False) -> tuple[np.ndarray, str]:
    """Seconds of each sampled minibatch's table reads: requests at the table reader's measured rate (``table_read_rps``:
    its threads, per-request work and the disk together), or the queued random-read rate when ``--disk-queue-iops``
    gives it (``overridden``) or the profile has no reader figure, plus the bytes beyond one page per request at the
    sequential rate; and which rate was used."""
    iops = disk.get("rand_read_iops_qd")
    if iops and overridden:
        why = f"{iops:,.0f} random 4 KiB reads/s with 8 in flight (--disk-queue-iops)"
    elif disk.get("table_read_rps"):
        iops = disk["table_read_rps"]
        why = f"{iops:,.0f} requests/s, the table reader's rate measured by the calibration"
    elif iops:
        why = f"{iops:,.0f} random 4 KiB reads/s with {int(disk.get('rand_read_depth', 8))} in flight"
    else:  # a profile from before the queued probe: depth 1 (an upper bound on the time)
        iops = disk["rand_read_iops"]
        why = (f"{iops:,.0f} random 4 KiB reads/s at depth 1 (the profile has no queued figure: calibrate again; "
               "an upper bound)")
    req, by = bd.table_requests[name], bd.table_bytes[name]
    return req / iops + np.maximum(by - req * ALIGNMENT, 0.0) / disk["seq_read_Bps"], why


def largest_fitting_blowup(size: int, other_bytes: float, feature_bytes: int, unbounded_bytes: float,
                           digits: int = 3) -> float | None | bool:
    """The largest ``B`` (rounded down to ``digits`` decimals) whose extents, at most ``floor(B x feature bytes)``,
    fit ``size`` beside ``other_bytes`` (tiers, index, metadata): None when the unbounded pack fits (no bound needed),
    False when not even ``B = 0`` fits."""
    room = size - other_bytes
    if room < 0:
        return False
    if unbounded_bytes <= room:
        return None
    if not feature_bytes:
        return None
    b = math.floor(room / feature_bytes * 10 ** digits) / 10 ** digits
    while b > 0 and budget_bytes(b, feature_bytes) > room:  # (float rounding)
        b = round(b - 10 ** -digits, digits)
    return max(b, 0.0)
