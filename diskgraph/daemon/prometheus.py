"""``GET /metrics``: the daemon and its running jobs in the Prometheus text format (0.0.4).

Daemon-wide: jobs by state, queue depth, running jobs, the concurrency limit, retries. Per running
job (label ``job``): the stage it is in (``stage`` label: import, sample, pack, train, predict,
embed), the layers a predict/embed stage has finished (exact mode), finished epochs, minibatches
per second (over the latest steps), bytes read from disk (the finished epochs' training and
evaluation reads), and hit rates per cache tier of the latest epoch, all read from the job's
directory. A family is declared only with at least one
sample: the per-job ones appear while a job runs (the rate once it has trained two minibatches).
"""

from __future__ import annotations

from . import STATES
from .jobdir import JobDir


def _family(lines: list[str], name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
    """Append a metric family; one without samples (a per-job family while no job runs) is left out entirely."""
    if not samples:
        return
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        label = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(f"{name}{{{label}}} {value:g}" if label else f"{name} {value:g}")


def render(daemon) -> str:
    counts = daemon.store.counts()
    lines: list[str] = []
    _family(lines, "diskgraph_jobs", "gauge", "Jobs by state.", [({"state": s}, counts.get(s, 0)) for s in STATES])
    _family(lines, "diskgraph_queue_depth", "gauge", "Jobs waiting to start.", [({}, counts.get("queued", 0))])
    _family(lines, "diskgraph_running_jobs", "gauge", "Job processes running now.", [({}, daemon.scheduler.running())])
    _family(lines, "diskgraph_max_concurrent", "gauge", "Jobs allowed to run at once.", [({}, daemon.max_concurrent)])
    _family(lines, "diskgraph_job_retries_total", "counter", "Restarts of jobs whose process was killed by a signal.",
            [({}, daemon.store.total_retries())])
    stages, layers, epochs, rates, read, hits = [], [], [], [], [], []
    for job in daemon.store.list(state="running"):
        jd, label = JobDir(daemon.root.job_path(job["id"])), {"job": str(job["id"])}
        progress = jd.progress()
        if progress["stage"]:
            stages.append(({**label, "stage": progress["stage"]}, 1))
            if progress.get("layers_done") is not None:
                layers.append(({**label, "stage": progress["stage"]}, progress["layers_done"]))
        records = [r for r in jd.epochs() if not r.get("summary")]
        epochs.append((label, len(records)))
        rate = jd.step_rate()
        if rate is not None:
            rates.append((label, rate))
        read.append((label, sum(int(r.get("read_bytes") or 0) + int(r.get("eval_read_bytes") or 0) for r in records)))
        latest = records[-1].get("hit_rate") if records else None
        for tier, value in (latest or {}).items():
            hits.append(({**label, "tier": tier}, value))
    _family(lines, "diskgraph_job_stage", "gauge", "The stage a running job is in (1; label stage).", stages)
    _family(lines, "diskgraph_job_inference_layers_done", "gauge",
            "Layers a running job's predict or embed stage has finished (exact mode; kept across attempts).", layers)
    _family(lines, "diskgraph_job_epochs", "gauge", "Finished training epochs of a running job.", epochs)
    _family(lines, "diskgraph_job_minibatches_per_second", "gauge", "Training minibatches per second of a running job.",
            rates)
    _family(lines, "diskgraph_job_read_bytes", "gauge", "Bytes read from disk by a running job's finished epochs.", read)
    _family(lines, "diskgraph_job_cache_hit_rate", "gauge",
            "Share of a running job's feature rows served by each tier (gpu, host, cold = read from disk) in its latest epoch.",
            hits)
    return "\n".join(lines) + "\n"
