"""The kinds of node labels a dataset can carry (its ``task``): how each is recognised, checked, stored and read back.

This module is the one place that declares them; the importer, :class:`~diskgraph.store.dataset.Dataset`, the
loaders and the tools ask it rather than testing dtypes themselves.

==============  ==========================================  ==========================  ==========================
task            stored ``labels`` array                     unlabelled node             training targets
==============  ==========================================  ==========================  ==========================
classification  int64 ``[N]``, class ids ``0..C-1``         ``-1``                      int64 ``[n]``
multilabel      uint8 ``[N, C]`` of 0/1 (C labels)          none: every node labelled   float32 ``[n, C]``
regression      float32 ``[N]`` or ``[N, T]``               NaN (the whole row)         float32 ``[n]`` / ``[n, T]``
==============  ==========================================  ==========================  ==========================

The manifest records ``"task"`` (absent in format versions 1 and 2: classification) and ``num_classes`` (C of
classification and multilabel, null for regression); a regression dataset records ``"target_shape"`` (``[]`` for
``[N]`` targets, ``[T]`` for ``[N, T]``).

Detection when the import is not told the task: a 1-D integer array (or floats holding only whole numbers) is
classification; a 2-D array holding only 0 and 1 is multilabel; any other float array (1-D with fractions or NaN,
2-D not 0/1) is regression; anything else is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

CLASSIFICATION, MULTILABEL, REGRESSION = "classification", "multilabel", "regression"
TASKS = (CLASSIFICATION, MULTILABEL, REGRESSION)
"""Every label kind, in the order the docs and ``--task`` list them."""

DEFAULT_TASK = CLASSIFICATION
"""The task of a dataset whose manifest records none (format versions 1 and 2)."""

STORED_DTYPE = {CLASSIFICATION: "int64", MULTILABEL: "uint8", REGRESSION: "float32"}
"""The dtype of the stored ``labels`` array of each task."""

TARGET_DTYPE = {CLASSIFICATION: np.int64, MULTILABEL: np.float32, REGRESSION: np.float32}
"""The dtype of the training targets (what the loss takes) of each task."""

_TASK_FLAG = "--task"


@dataclass
class CheckedLabels:
    """Labels the import accepted.

    Attributes:
        values: the array to store (dtype :data:`STORED_DTYPE` of ``task``).
        task: the label kind.
        num_classes: C of classification and multilabel; None for regression.
        target_shape: regression only: ``[]`` for ``[N]`` targets, ``[T]`` for ``[N, T]``.
    """

    values: np.ndarray
    task: str
    num_classes: int | None
    target_shape: list[int] = field(default_factory=list)

    def manifest_fields(self) -> dict:
        """The dataset manifest's entries describing these labels (besides ``num_classes``)."""
        return {"task": self.task, **({"target_shape": list(self.target_shape)} if self.task == REGRESSION else {})}


def check_task(task: str | None) -> str | None:
    """``task`` when it names a label kind (or is None).

    Raises:
        InputError: an unknown task.
    """
    if task is not None and task not in TASKS:
        raise InputError(f"{_TASK_FLAG} {task!r} is not a label kind; pass one of {', '.join(TASKS)}")
    return task


def _all_01(a: np.ndarray) -> bool:
    return a.dtype == np.bool_ or bool(((a == 0) | (a == 1)).all())


def _whole(a: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(a)) and np.all(a == np.round(a)))


def detect_task(labels: np.ndarray, label: str) -> str:
    """The label kind of ``labels`` when the user did not name one (see the module docstring).

    Raises:
        InputError: an array that is none of the kinds.
    """
    a = labels
    kind = a.dtype.kind
    if a.ndim == 1:
        if kind in "iu" or (kind == "f" and _whole(a)):
            return CLASSIFICATION
        if kind == "f":
            return REGRESSION
        raise InputError(f"{label} has dtype {a.dtype}; labels must be integer class ids (-1 for unlabelled) or float "
                         "regression targets: convert them")
    if a.ndim == 2:
        if kind in "biuf" and a.shape[1] > 0 and _all_01(a):
            return MULTILABEL
        if kind == "f":
            return REGRESSION
        raise InputError(f"{label} is a 2-D {a.dtype} array of shape {a.shape} whose values are not all 0 or 1; 2-D labels "
                         "are multilabel rows of 0/1 or float regression targets: give class ids as a 1-D array")
    raise InputError(f"{label} has shape {a.shape}; labels must be [N] (class ids or regression targets) or [N, C] "
                     "(multilabel 0/1 or regression targets)")


def check_node_labels(labels: np.ndarray, num_nodes: int, *, task: str | None = None, num_classes: int | None = None,
                      label: str = "labels", nodes_from: str = "") -> CheckedLabels:
    """Validate node labels of the kind ``task`` (None: detected) and convert them to their stored form.

    Raises:
        InputError: labels that are not of that kind, the wrong length, values outside the kind's range, or a
            ``num_classes`` that contradicts them — one sentence.
    """
    labels = np.asarray(labels)
    forced = check_task(task) is not None
    task = task if forced else detect_task(labels, label)
    if task == CLASSIFICATION:
        if forced and labels.ndim == 2:
            raise InputError(f"{label} has shape {labels.shape} but {_TASK_FLAG} classification needs a 1-D array of "
                             f"class ids; drop {_TASK_FLAG} to import [N, C] rows as multilabel or regression targets")
        if forced and labels.ndim == 1 and labels.dtype.kind == "f" and not _whole(labels):
            bad = np.isfinite(labels) & (labels != np.round(labels))
            i = int(np.argmax(bad if bad.any() else ~np.isfinite(labels)))
            raise InputError(f"{label} holds {labels[i]} at node {i}, not a class id, but {_TASK_FLAG} classification "
                             f"needs whole class ids (-1 for unlabelled); drop {_TASK_FLAG} to import them as regression "
                             "targets")
        values, c = check_labels(labels, num_nodes, num_classes, label, nodes_from)
        return CheckedLabels(values, CLASSIFICATION, c)
    if task == MULTILABEL:
        return _check_multilabel(labels, num_nodes, num_classes, label, nodes_from)
    return _check_regression(labels, num_nodes, num_classes, label, nodes_from)


def _check_length(labels: np.ndarray, num_nodes: int, label: str, nodes_from: str) -> None:
    if labels.shape[0] != num_nodes:
        raise InputError(f"{label} has {labels.shape[0]} label rows but the graph has {num_nodes} nodes ({nodes_from}); "
                         "give one label row per node")


def _check_multilabel(labels: np.ndarray, num_nodes: int, num_classes: int | None, label: str,
                      nodes_from: str) -> CheckedLabels:
    if labels.ndim != 2:
        raise InputError(f"{label} has shape {labels.shape} but multilabel labels are [N, C], one 0/1 column per label; "
                         f"give a 2-D array, or drop {_TASK_FLAG} multilabel to import class ids")
    if labels.dtype.kind not in "biuf":
        raise InputError(f"{label} has dtype {labels.dtype}; multilabel labels must be 0/1 numbers or booleans: convert them")
    if labels.shape[1] == 0:
        raise InputError(f"{label} has shape {labels.shape}, no label columns; multilabel labels need at least one column")
    _check_length(labels, num_nodes, label, nodes_from)
    bad = ~((labels == 0) | (labels == 1))
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        raise InputError(f"{label} holds {labels[i, j]} at node {i}, label {j}, but multilabel labels must be 0 or 1; "
                         f"fix the value, or drop {_TASK_FLAG} multilabel to import other values as regression targets")
    c = int(labels.shape[1])
    if num_classes is not None and num_classes != c:
        raise InputError(f"--num-classes {num_classes} disagrees with the {c} label columns of {label} (multilabel); "
                         "drop --num-classes")
    return CheckedLabels(labels.astype(np.uint8), MULTILABEL, c)


def _check_regression(labels: np.ndarray, num_nodes: int, num_classes: int | None, label: str,
                      nodes_from: str) -> CheckedLabels:
    if labels.ndim not in (1, 2):
        raise InputError(f"{label} has shape {labels.shape}; regression targets must be [N] or [N, T]")
    if labels.dtype.kind not in "iuf":
        raise InputError(f"{label} has dtype {labels.dtype}; regression targets must be numbers: convert them to float")
    if labels.ndim == 2 and labels.shape[1] == 0:
        raise InputError(f"{label} has shape {labels.shape}, no target columns; regression needs at least one target")
    _check_length(labels, num_nodes, label, nodes_from)
    if num_classes is not None:
        raise InputError(f"--num-classes {num_classes} does not apply to the regression targets of {label}; drop "
                         "--num-classes")
    with np.errstate(over="ignore"):  # (values beyond float32's range become inf: refused below)
        values = labels.astype(np.float32)
    rows = values.reshape(values.shape[0], -1)
    inf = np.isinf(rows)
    if inf.any():
        i, j = (int(k) for k in np.argwhere(inf)[0])
        orig = labels.reshape(labels.shape[0], -1)[i, j]
        why = "" if np.isinf(orig) else ", beyond float32's range"
        raise InputError(f"{label} holds {orig} at node {i}{f', target {j}' if labels.ndim == 2 else ''}{why}; "
                         "regression targets must be finite (NaN marks an unlabelled node): fix the value")
    nan = np.isnan(rows)
    partial = nan.any(axis=1) & ~nan.all(axis=1)
    if partial.any():
        i = int(np.argmax(partial))
        raise InputError(f"{label} has NaN in some but not all targets of node {i}; NaN marks an unlabelled node and must "
                         "fill its whole row: fill in the missing targets or set the whole row to NaN")
    return CheckedLabels(values, REGRESSION, None, list(values.shape[1:]))


def check_labels(labels: np.ndarray, num_nodes: int, num_classes: int | None, label: str,
                 nodes_from: str) -> tuple[np.ndarray, int]:
    """Validate classification labels; returns (int64 labels, number of classes).

    Raises:
        InputError: not 1-D integers, wrong length, or a value outside ``-1..C-1``.
    """
    if labels.ndim != 1:
        raise InputError(f"{label} has shape {labels.shape}; labels must be a 1-D array with one class id per node")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and _whole(labels):
            labels = labels.astype(np.int64)
        else:
            raise InputError(f"{label} has dtype {labels.dtype}; labels must be integer class ids (-1 for unlabelled): convert them")
    if labels.shape[0] != num_nodes:
        raise InputError(f"{label} has {labels.shape[0]} labels but the graph has {num_nodes} nodes ({nodes_from}); give one label per node")
    labels = labels.astype(np.int64, copy=False)
    if labels.size:
        lo = int(labels.min())
        if lo < -1:
            i = int(np.argmax(labels < -1))
            raise InputError(f"{label} holds label {lo} at node {i}; labels must be class ids 0..C-1, or -1 for an unlabelled node")
        hi = int(labels.max())
        if hi >= max(num_nodes, 2):
            i = int(np.argmax(labels == hi))
            raise InputError(f"{label} holds label {hi} at node {i}, more classes than the graph's {num_nodes} nodes; "
                             "labels must be dense class ids 0..C-1: renumber them (np.unique(labels, "
                             "return_inverse=True))")
        if num_classes is not None and hi >= num_classes:
            i = int(np.argmax(labels >= num_classes))
            raise InputError(f"{label} holds label {hi} at node {i} but --num-classes is {num_classes}; fix the label or raise --num-classes")
    else:
        hi = -1
    if num_classes is not None and num_classes > max(num_nodes, 2):
        raise InputError(f"--num-classes {num_classes} is more classes than the graph's {num_nodes} nodes; pass the "
                         "number of classes the labels use")
    return labels, int(num_classes if num_classes is not None else hi + 1)


# -- reading stored labels back ---------------------------------------------------------------------------------------

def labelled_mask(values: np.ndarray, task: str) -> np.ndarray:
    """bool per row of stored labels ``values``: whether that node has a label (target)."""
    if task == CLASSIFICATION:
        return np.asarray(values) >= 0
    if task == MULTILABEL:
        return np.ones(values.shape[0], dtype=bool)
    nan = np.isnan(np.asarray(values))
    return ~(nan.any(axis=1) if nan.ndim == 2 else nan)


def gather_targets(values: np.ndarray, nodes: np.ndarray, task: str) -> np.ndarray:
    """The training targets of ``nodes`` (an index array) from stored labels ``values``: one fancy index, then the
    dtype of :data:`TARGET_DTYPE` (int64 ``[n]``, float32 ``[n, C]``, float32 ``[n]`` / ``[n, T]``); a fresh array."""
    out = np.asarray(values[nodes], dtype=TARGET_DTYPE[task])
    return out if out.flags.writeable and out.flags.c_contiguous else np.array(out)


def expected_layout(task: str, num_classes: int | None, target_shape) -> tuple[str, tuple[int, ...] | None]:
    """(stored dtype, per-node shape) the labels array of ``task`` must have (None: not fixed by the manifest)."""
    if task == MULTILABEL:
        return STORED_DTYPE[task], (int(num_classes),) if num_classes is not None else None
    if task == REGRESSION:
        return STORED_DTYPE[task], tuple(int(t) for t in target_shape) if target_shape is not None else None
    return STORED_DTYPE[task], ()


def output_width(task: str, num_classes: int | None, row_shape: tuple[int, ...]) -> int:
    """The model's output width: C for classification and multilabel, T for ``[N, T]`` regression, 1 for ``[N]``."""
    if task == REGRESSION:
        return int(row_shape[0]) if row_shape else 1
    return int(num_classes or 0)


def label_problems(values: np.ndarray, task: str, num_classes: int | None) -> list[str]:
    """What is wrong with stored labels of ``task`` (empty when sound), for ``verify``."""
    lab = np.asarray(values)
    if task == CLASSIFICATION:
        hi = num_classes if num_classes is not None else 0
        if lab.size and (lab.min() < -1 or lab.max() >= hi):
            return [f"labels: values outside -1..{hi - 1}"]
        return []
    if task == MULTILABEL:
        if lab.size and lab.max() > 1:
            return ["labels: multilabel values other than 0 and 1"]
        return []
    rows = lab.reshape(lab.shape[0], -1)
    if np.isinf(rows).any():
        return ["labels: infinite regression targets"]
    nan = np.isnan(rows)
    partial = nan.any(axis=1) & ~nan.all(axis=1)
    if partial.any():
        return [f"labels: node {int(np.argmax(partial))} has NaN in some but not all targets"]
    return []


def label_stats(values: np.ndarray, task: str, num_classes: int | None) -> dict:
    """The statistics ``inspect`` shows of stored labels (JSON-ready).

    classification: ``label_counts`` (class → nodes), ``unlabelled_nodes`` (and ``labels_out_of_range`` when
    damaged); multilabel: ``label_positives`` (label → nodes with a 1), ``unlabelled_nodes`` 0; regression:
    ``targets`` (``mean`` and ``std`` per target over the labelled nodes, None without any), ``unlabelled_nodes``.
    """
    lab = np.asarray(values)
    out: dict = {"task": task}
    if task == CLASSIFICATION:
        classes = int(num_classes or 0)
        valid = (lab >= 0) & (lab < classes)  # (a damaged label outside 0..C-1 must not size the count array)
        counts = np.bincount(lab[valid], minlength=classes)
        out["label_counts"] = {str(c): int(k) for c, k in enumerate(counts)}
        out["unlabelled_nodes"] = int((lab < 0).sum())
        out_of_range = int(lab.size - valid.sum()) - out["unlabelled_nodes"]
        if out_of_range:
            out["labels_out_of_range"] = out_of_range
    elif task == MULTILABEL:
        out["label_positives"] = {str(c): int(k) for c, k in enumerate(lab.sum(axis=0, dtype=np.int64))}
        out["unlabelled_nodes"] = 0
    else:
        rows = lab.reshape(lab.shape[0], -1)
        have = labelled_mask(rows, task)
        kept = rows[have].astype(np.float64)
        out["targets"] = {"count": int(rows.shape[1]),
                          "mean": [float(v) for v in kept.mean(axis=0)] if kept.shape[0] else None,
                          "std": [float(v) for v in kept.std(axis=0)] if kept.shape[0] else None}
        out["unlabelled_nodes"] = int(rows.shape[0] - have.sum())
    return out
