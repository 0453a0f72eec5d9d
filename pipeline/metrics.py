"""Measurements the trainer logs: accuracy, ROC-AUC, bytes read from disk, peak memory (host, and GPU per epoch)."""

from __future__ import annotations

import resource

import numpy as np
import torch


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(correct, total) of argmax predictions."""
    return int((logits.argmax(dim=1) == y).sum()), int(y.shape[0])


def roc_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """ROC-AUC of binary labels ``y`` (0/1) given scores (higher = class 1); ties get average ranks.

    Returns NaN when only one class is present.
    """
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def process_read_bytes() -> int:
    """Bytes this process has made the kernel read from storage (``/proc/self/io`` read_bytes; 0 if unavailable)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (bytes)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def peak_gpu_bytes(device: torch.device) -> int:
    """Peak memory torch allocated on a CUDA device since the last :func:`reset_peak_gpu_bytes` (0 on CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return 0


def reserved_gpu_bytes(device: torch.device) -> int:
    """Peak memory torch's caching allocator reserved on a CUDA device since the last :func:`reset_peak_gpu_bytes`
    (what ``nvidia-smi`` sees of the process, less CUDA's own context; 0 on CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_reserved(device))
    return 0


def reset_peak_gpu_bytes(device: torch.device) -> None:
    """Start the peaks of :func:`peak_gpu_bytes` and :func:`reserved_gpu_bytes` again (the trainer: at each epoch's
    start, so they are per epoch); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
