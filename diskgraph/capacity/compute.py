"""The profile's ``compute`` entry: model steps timed on sampled blocks, fitted to the models' cost terms.

Each model of :data:`diskgraph.models.MODELS` runs training steps (forward, backward, Adam) and evaluation forwards
on minibatches sampled with the project's sampler from an in-memory R-MAT graph (:data:`COMPUTE_SHAPES`, or
:data:`QUICK_SHAPES` for ``--quick-calibration``); the times are fitted (non-negative, on relative error) as
``c0 + c1 * dense_flops + c2 * edge_elements + c3 * node_elements``, the terms
:func:`diskgraph.models.work_terms` gives for each minibatch. A plan times the same steps on its own minibatches
(:func:`time_model_steps`) to scale that fit. torch and the models are imported when a step is timed, not with
this module.
"""

from __future__ import annotations

import functools

import numpy as np

from .fit import relative_fit
from .timing import CALIBRATION_STEP_TIMING, QUICK_TIMING, STEP_TIMING, robust_seconds


@functools.lru_cache(maxsize=2)
def _rmat(nodes: int, edges: int, seed: int):
    """The calibration's in-memory R-MAT graph (built once per process: the read stage and the model steps both
    sample from it)."""
    from .workload import rmat_csc

    return rmat_csc(nodes, edges, seed)


def sampled_minibatches(shapes, nodes: int = 100_000, edges: int = 1_000_000, seed: int = 0):
    """Minibatches of realistic shape: sampled with the project's sampler from an in-memory R-MAT graph
    (:func:`~diskgraph.capacity.workload.rmat_csc`), one per ``(batch, fanouts, ...)`` in ``shapes``."""
    from ..sampler.neighbor_sampler import sample_minibatch

    indptr, indices = _rmat(nodes, edges, seed)
    rng = np.random.default_rng(seed)
    return [sample_minibatch(indptr, indices, rng.choice(nodes, size=min(b, nodes), replace=False), fan, i + 1)
            for i, (b, fan, *_) in enumerate(shapes)]


def blocks_on(mb, device):
    """The blocks of minibatch ``mb`` on ``device``."""
    from ..pipeline.blocks import blocks_from_minibatch

    return [b.to(device) for b in blocks_from_minibatch(mb)]


def time_model_steps(model_name: str, mbs, in_dim: int, hidden: int, classes: int, heads: int, device,
                     timing: dict | None = None) -> tuple[list[float], list[float]]:
    """Seconds of a training step (forward, backward, Adam) and of an evaluation forward on each minibatch (random
    features and labels), each timed as ``timing`` says (:data:`STEP_TIMING` by default: warm-up steps, then the
    mean of the fastest quarter of several)."""
    import torch
    import torch.nn.functional as F

    from ..models import build_model

    timing = STEP_TIMING if timing is None else timing
    rng = np.random.default_rng(0)
    train_t, eval_t = [], []

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for mb in mbs:
        blocks = blocks_on(mb, device)
        x = torch.randn(int(mb.layer_sizes[-1]), in_dim, device=device)
        y = torch.from_numpy(rng.integers(0, classes, int(mb.layer_sizes[0]))).to(device)
        torch.manual_seed(0)
        model = build_model(model_name, in_dim, hidden, classes, mb.num_hops, heads=heads).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            model.train()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(blocks, x), y)
            loss.backward()
            opt.step()
            float(loss.detach())
            sync()

        def forward():
            model.eval()
            with torch.no_grad():
                float(model(blocks, x).sum())
            sync()

        train_t.append(robust_seconds(step, **timing))
        eval_t.append(robust_seconds(forward, **timing))
    return train_t, eval_t


COMPUTE_SHAPES = [(256, [10, 5], 64), (1024, [10, 5], 64), (512, [15, 10], 128), (1024, [15, 10], 256),
                  (256, [10, 5], 512), (512, [10, 10, 5], 128), (2048, [5, 5], 256), (1024, [10, 5], 1024),
                  (128, [5, 5], 32), (512, [10, 5], 128), (1024, [10, 5, 3], 64), (2048, [10, 5], 128)]
QUICK_SHAPES = [(128, [5, 5], 32), (256, [10, 5], 64), (512, [10, 5], 32), (256, [15, 10], 64), (64, [5], 16)]


def measure_compute(device, models=None, quick: bool = False, hidden: int = 256, tick=None) -> dict:
    """Timed training steps and evaluation forwards of each model on sampled blocks (each timed several times after a
    warm-up, :data:`CALIBRATION_STEP_TIMING`); fitted coefficients. ``tick()`` is called after each model and
    shape, and after the thread speed-up. ``models``: names of :data:`diskgraph.models.MODELS` (default: all)."""
    import torch
    import torch.nn.functional as F

    from ..models import MODELS, build_model, work_terms

    models = MODELS if models is None else models
    shapes = QUICK_SHAPES if quick else COMPUTE_SHAPES
    hidden = 64 if quick else hidden
    mbs = sampled_minibatches(shapes, *((20_000, 200_000) if quick else (100_000, 1_000_000)))
    classes = 16
    timing = QUICK_TIMING if quick else CALIBRATION_STEP_TIMING
    rng = np.random.default_rng(0)
    out = {}
    for name in models:
        rows, train_t, eval_t = [], [], []
        for mb, (b, fan, fdim) in zip(mbs, shapes):
            tt, te = time_model_steps(name, [mb], fdim, hidden, classes, 4, device, timing)
            train_t += tt
            eval_t += te
            rows.append(work_terms(name, mb.layer_sizes, [len(i) for i in mb.hop_indices], fdim, hidden, classes)[:4])
            if tick:
                tick()
        ct, et = relative_fit(rows, train_t)
        ce, ee = relative_fit(rows, eval_t)
        out[name] = {"train": [float(v) for v in ct], "eval": [float(v) for v in ce], "train_fit_max_rel_error": et,
                     "eval_fit_max_rel_error": ee,
                     "terms": ["const_s", "s_per_dense_flop", "s_per_edge_element", "s_per_node_element"]}
    # how many cores a training step keeps busy: its speed-up over one thread (CPU only)
    speedup = 1.0
    if device.type == "cpu" and torch.get_num_threads() > 1:
        i = len(shapes) // 2
        mb, (_, fan, fdim) = mbs[i], shapes[i]
        blocks = blocks_on(mb, device)
        x = torch.randn(int(mb.layer_sizes[-1]), fdim)
        y = torch.from_numpy(rng.integers(0, classes, int(mb.layer_sizes[0])))
        model = build_model("sage", fdim, hidden, classes, len(fan))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step1():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(blocks, x), y).backward()
            opt.step()

        t_all = robust_seconds(step1, **timing)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            t_one = robust_seconds(step1, **timing)
        finally:
            torch.set_num_threads(threads)
        speedup = max(1.0, t_one / t_all)
    if tick:
        tick()
    return {"models": out, "thread_speedup": speedup, "hidden_calibrated": hidden}
