"""Helpers of ``tools/bench/gpu_check.sh`` (docs/gpu.md): install, environment facts, gather bandwidth,
host syncs per step, and the summary.

    python tools/bench/gpu_check.py install REPO [--wheels DIR] [--extras test,pyg] [--shim DIR] [--dry-run]
    python tools/bench/gpu_check.py env OUT.json
    python tools/bench/gpu_check.py gather OUT.json --device cuda [--rows 1000000 --dim 128 --k 100000]
    python tools/bench/gpu_check.py syncs OUT.json DATASET --pack gpu [--hidden 256]
    python tools/bench/gpu_check.py summarize LOGDIR OUTDIR

``install`` and ``env`` need only the standard library (and pip): they run before diskgraph is importable.
``install`` never installs, upgrades or downgrades torch: it installs the checkout with ``--no-deps`` and then
only the declared dependencies that are missing, pinned to the torch (and numpy, numba) already there; from
the wheels in ``--wheels DIR`` without an index when that folder holds wheels (machines without network).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

KEEP = ("torch", "numpy", "numba", "llvmlite", "triton", "pyarrow")
"""Installed distributions the install pins to their installed versions (never replaced)."""


# -- install ----------------------------------------------------------------------------------------------------


def _packaging():
    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.utils import canonicalize_name
    return Requirement, canonicalize_name


def _installed(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def project_requirements(repo: Path, extras: list[str]) -> list[str]:
    """The dependencies pyproject.toml declares (and those of ``extras``)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return reqs


def missing_requirements(reqs: list[str]) -> list[str]:
    """The requirements of ``reqs`` that apply here and are not satisfied, torch never among them."""
    Requirement, canonicalize_name = _packaging()
    out = []
    for text in reqs:
        r = Requirement(text)
        if canonicalize_name(r.name) == "torch" or (r.marker is not None and not r.marker.evaluate()):
            continue
        have = _installed(r.name)
        if have is None or (r.specifier and not r.specifier.contains(have, prereleases=True)):
            out.append(text)
    return out


def _from_checkout(repo: Path) -> bool:
    code = ("import diskgraph, os, sys; "
            "sys.exit(0 if os.path.realpath(diskgraph.__file__).startswith(os.path.realpath(sys.argv[1]) + os.sep) else 1)")
    return subprocess.run([sys.executable, "-c", code, str(repo)], capture_output=True, cwd="/").returncode == 0


def _run(cmd: list[str], dry_run: bool) -> int:
    print("+ " + " ".join(cmd), flush=True)
    return 0 if dry_run else subprocess.run(cmd).returncode


def make_shim(repo: Path, shim: Path) -> Path:
    """A PYTHONPATH folder that imports the checkout as ``diskgraph`` (pyproject's package-dir mapping, by symlinks)."""
    import shutil

    shutil.rmtree(shim, ignore_errors=True)
    (shim / "diskgraph").mkdir(parents=True)
    for f in (repo / "diskgraph").iterdir():
        (shim / "diskgraph" / f.name).symlink_to(f)
    for d in ("store", "sampler", "pipeline", "native"):
        (shim / "diskgraph" / d).symlink_to(repo / d)
    return shim


def cmd_install(a) -> int:
    repo = Path(a.repo).resolve()
    wheels = Path(a.wheels).resolve() if a.wheels else None
    offline = wheels is not None and wheels.is_dir() and any(wheels.glob("*.whl"))
    find = ["--no-index", "--find-links", str(wheels)] if offline else []
    pins = [f"{n}=={v}" for n in KEEP if (v := _installed(n))]
    import tempfile

    pin_file = Path(a.pin_file or (Path(tempfile.gettempdir()) / "diskgraph-gpu-pins.txt"))
    pin_file.write_text("".join(p + "\n" for p in pins))
    pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-c", str(pin_file)]
    print(f"torch here: {_installed('torch')} (kept: {', '.join(pins) or 'nothing installed'}); "
          f"wheels: {wheels if offline else 'none (uses the index)'}", flush=True)
    rc = 0
    if _from_checkout(repo):
        print(f"diskgraph is already imported from {repo}: no editable install", flush=True)
    else:
        has_setuptools = (_installed("setuptools") or "0").split(".")[0].isdigit() and \
            int((_installed("setuptools") or "0").split(".")[0]) >= 68
        # setuptools here: build in this environment; else an isolated build gets it from .whl/ (or the index)
        isolation = ["--no-build-isolation"] if has_setuptools else find
        if _run(pip + ["--no-deps", *isolation, "-e", str(repo)], a.dry_run) != 0:
            rc = 1
            if a.shim:
                shim = make_shim(repo, Path(a.shim))
                print(f"pip could not install the checkout; PYTHONPATH shim in {shim}", flush=True)
    missing = missing_requirements(project_requirements(repo, [e for e in a.extras.split(",") if e]))
    if missing:
        print("missing dependencies: " + ", ".join(missing), flush=True)
        if _run(pip + find + missing, a.dry_run) != 0:
            print("could not install every missing dependency (see above); `make wheels` on a machine with network "
                  "puts them into .whl/", flush=True)
            rc = 1
    else:
        print("every declared dependency is there", flush=True)
    after = _installed("torch")
    if pins and after != dict(p.split("==") for p in pins).get("torch"):
        print(f"ERROR: torch changed to {after}", flush=True)
        rc = 1
    return rc


# -- environment --------------------------------------------------------------------------------------------------


def cmd_env(a) -> int:
    out: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import torch

        out.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            out.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                       gpu_mem_gib=round(p.total_memory / 2**30, 1), device_count=torch.cuda.device_count(),
                       nccl=torch.distributed.is_nccl_available(), can_sleep=hasattr(torch.cuda, "_sleep"))
            try:
                out["nccl_version"] = ".".join(map(str, torch.cuda.nccl.version()))
            except Exception as e:  # noqa: BLE001
                out["nccl_version"] = repr(e)
    except Exception as e:  # noqa: BLE001
        out["torch_error"] = repr(e)
    for mod in ("numpy", "numba", "pyarrow", "psutil", "zarr", "xxhash", "tqdm", "pytest", "torch_geometric"):
        v = _installed(mod.replace("_", "-")) or _installed(mod)
        out[mod] = v or "MISSING"
    try:
        r = subprocess.run([sys.executable, "-c", "import diskgraph; print(diskgraph.__file__)"], capture_output=True,
                           text=True, cwd="/", timeout=120)
        out["diskgraph"] = r.stdout.strip() or ("not importable: " + (r.stderr.strip().splitlines() or ["?"])[-1])
    except Exception as e:  # noqa: BLE001
        out["diskgraph"] = f"not importable: {e!r}"
    smi = {}
    for q in ("name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max,pcie.link.gen.current,"
              "pcie.link.width.current",):
        try:
            r = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv"], capture_output=True, text=True,
                               timeout=30)
            smi["query"] = r.stdout.strip() if r.returncode == 0 else f"rc {r.returncode}: {r.stderr.strip()[:200]}"
        except FileNotFoundError:
            smi["query"] = "skipped: no nvidia-smi on this machine"
        except Exception as e:  # noqa: BLE001
            smi["query"] = repr(e)
    out["nvidia_smi"] = smi
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


# -- gather bandwidth ----------------------------------------------------------------------------------------------


def _aligned_host(torch, rows: int, dim: int, dtype):
    """A CPU tensor in page-aligned anonymous memory of its own (what diskgraph registers), and its mapping."""
    import mmap

    import numpy as np

    nbytes = rows * dim * torch.empty((), dtype=dtype).element_size()
    m = mmap.mmap(-1, -(-nbytes // 4096) * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    t = torch.from_numpy(np.frombuffer(m, dtype=np.uint8, count=nbytes)).view(dtype).view(rows, dim)
    return t, m


def cmd_gather(a) -> int:
    import torch

    res: dict = {"rows": a.rows, "dim": a.dim, "k": a.k, "device": a.device, "reps": a.reps, "dtypes": {}}
    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        res["skipped"] = "DEVICE is cuda but torch sees no CUDA GPU"
        Path(a.out).write_text(json.dumps(res, indent=1))
        return 1
    dev = torch.device(a.device)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(fn):
        for _ in range(2):
            fn()
            sync()
        ts = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    for name in a.dtypes.split(","):
        dtype = getattr(torch, name)
        r: dict = {"methods": {}, "skipped": {}}
        res["dtypes"][name] = r
        try:
            host, mapping = _aligned_host(torch, a.rows, a.dim, dtype)
            g = torch.Generator().manual_seed(0)
            host.copy_(torch.rand(a.rows, a.dim, generator=g).to(dtype))
            idx_cpu = torch.randint(0, a.rows, (a.k,), generator=g, dtype=torch.int64)
            want = host.index_select(0, idx_cpu)
            moved = want.numel() * want.element_size()
            r["gathered_bytes"] = moved

            def put(method, fn, check):
                s = timed(fn)
                r["methods"][method] = {"s": s, "GBps": moved / s / 1e9, "exact": bool(torch.equal(check().cpu(), want))}

            if not cuda:
                out = torch.empty_like(want)
                put("cpu_index_select", lambda: torch.index_select(host, 0, idx_cpu, out=out), lambda: out)
                why = f"DEVICE={a.device}: no CUDA device (GPU-resident, UVA and pinned-copy paths need one)"
                for m in ("gpu_resident", "uva", "pinned_copy"):
                    r["skipped"][m] = why
                continue
            idx = idx_cpu.to(dev)
            table = host.to(dev)
            put("gpu_resident", lambda: table.index_select(0, idx), lambda: table.index_select(0, idx))
            table = None  # free the GPU copy before the UVA run
            torch.cuda.empty_cache()
            try:
                from diskgraph.pipeline.uva import RegisteredHostTensor, UVAError

                try:
                    t0 = time.perf_counter()
                    reg = RegisteredHostTensor(host, dev)
                    r["uva_register_s"] = time.perf_counter() - t0
                    put("uva", lambda: reg.cuda.index_select(0, idx), lambda: reg.cuda.index_select(0, idx))
                    reg.close()
                except UVAError as e:
                    r["skipped"]["uva"] = f"registration refused: {e}"
            except ImportError as e:
                r["skipped"]["uva"] = f"diskgraph.pipeline.uva not importable: {e}"
            pinned_out = torch.empty(want.shape, dtype=dtype, pin_memory=True)
            holder = {}

            def pinned_copy():
                torch.index_select(host, 0, idx_cpu, out=pinned_out)
                holder["x"] = pinned_out.to(dev, non_blocking=True)

            put("pinned_copy", pinned_copy, lambda: holder["x"])
            del mapping
        except Exception:  # noqa: BLE001
            r["error"] = traceback.format_exc()[-2000:]
        if cuda:
            torch.cuda.empty_cache()
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


# -- host syncs per training step --------------------------------------------------------------------------------


def cmd_syncs(a) -> int:
    """One epoch of ``diskgraph train --device cuda`` in this process with ``torch.cuda.set_sync_debug_mode("warn")``:
    every host synchronisation (``.item()``, a blocking copy, …) becomes a warning, counted by call site."""
    import collections
    import threading
    import warnings

    import torch

    res: dict = {"pack": a.pack}
    if not torch.cuda.is_available():
        res["skipped"] = "no CUDA device: host syncs are a CUDA notion"
        Path(a.out).write_text(json.dumps(res, indent=1))
        return 0
    from diskgraph.cli import main

    seen = []

    def show(message, category, filename, lineno, file=None, line=None):
        seen.append((threading.current_thread().name, f"{os.path.basename(filename)}:{lineno}"))

    steps = Path(a.out).with_suffix(".steps.jsonl")
    steps.unlink(missing_ok=True)
    argv = ["train", a.dataset, "--pack", a.pack, "--hidden", str(a.hidden), "--epochs", "1", "--seed", "0",
            "--device", "cuda", "--run-dir", str(Path(a.out).with_suffix(".run")), "--overwrite", "--step-log",
            str(steps), "-q"]
    old = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            rc = main(argv)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = old
    n = len(steps.read_text().splitlines()) if steps.exists() else 0
    sites = collections.Counter(f"{t} {s}" for t, s in seen)
    res.update(rc=rc, steps=n, syncs=len(seen), syncs_per_step=round(len(seen) / n, 2) if n else None,
               note="whole run (setup, evaluation and checkpoint included) ÷ training steps: an upper bound",
               sites={k: c for k, c in sites.most_common(15)})
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


# -- summary -------------------------------------------------------------------------------------------------------


def _load(p: Path):
    try:
        return json.loads(p.read_text())
    except Exception:  # noqa: BLE001
        return None


def _smi(log: Path, name: str) -> dict | None:
    p = log / f"smi-{name}.csv"
    if not p.exists():
        return None
    util = []
    for row in csv.reader(p.open()):
        try:
            util.append(float(row[1]))
        except (ValueError, IndexError):
            pass
    r: dict = {"samples": len(util)}
    if util:
        busy = [i for i, v in enumerate(util) if v > 0]
        window = util[busy[0]:busy[-1] + 1] if busy else []
        r.update(util_mean=round(statistics.fmean(util), 1), util_max=max(util),
                 util_mean_active=round(statistics.fmean(window), 1) if window else 0.0)
    d = log / f"dmon-{name}.txt"
    if d.exists():
        cols, rx, tx = None, [], []
        for line in d.open():
            if line.startswith("#"):
                if cols is None and "gpu" in line:
                    cols = line[1:].split()
                continue
            f = line.split()
            if cols and "rxpci" in cols:
                try:
                    rx.append(float(f[cols.index("rxpci")]))
                    tx.append(float(f[cols.index("txpci")]))
                except (ValueError, IndexError):
                    pass
        if rx:
            busy = [v for v in rx if v > 0]
            r.update(pcie_rx_MBps_max=max(rx), pcie_rx_MBps_mean_nonzero=round(statistics.fmean(busy), 1) if busy else 0.0,
                     pcie_tx_MBps_max=max(tx) if tx else None)
        else:
            r["pcie"] = "nvidia-smi dmon gave no rxpci column"
    return r


def cmd_summarize(a) -> int:
    log, out = Path(a.log), Path(a.out)
    S: dict = {"params": _load(log / "params.json") or {}, "steps": {}, "skipped": {}}
    if (log / "status.tsv").exists():
        for line in (log / "status.tsv").read_text().splitlines():
            name, rc, secs, *why = line.split("\t")
            S["steps"][name] = {"rc": rc, "s": int(secs)}
            if rc == "skipped":
                S["skipped"][name] = why[0] if why else ""
    S["env"] = _load(log / "env.json")
    S["install"] = (log / "install.log").read_text()[-3000:] if (log / "install.log").exists() else None
    t = _load(log / "cuda-tests.json")
    if t:
        t = {k: v for k, v in t.items() if k != "tests"} | {
            "not_passed": {k: v for k, v in t["tests"].items() if v["outcome"] != "passed"}}
    S["cuda_tests"] = t
    S["gather"] = _load(log / "gather.json")
    S["syncs"] = _load(log / "syncs.json")
    S["data"] = _load(log / "data.json")
    S["train"] = {}
    for cfg in ("gpu", "host", "cold"):
        p = log / f"train-{cfg}.jsonl"
        if not p.exists():
            continue
        lines = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
        epochs = [x for x in lines if not x.get("summary") and "epoch" in x]
        S["train"][cfg] = {
            "epochs": [{k: e.get(k) for k in ("epoch", "epoch_s", "eval_s", "minibatches", "stage_s", "overlap",
                                              "queue_wait_s", "hit_rate", "read_bytes", "peak_gpu_bytes", "loss",
                                              "val_acc")} for e in epochs],
            "summary": next((x for x in lines if x.get("summary")), None), "gpu": _smi(log, f"train-{cfg}")}
    S["gather_gpu"] = _smi(log, "gather")
    (out / "summary.json").write_text(json.dumps(S, indent=1, default=str))

    env = S["env"] or {}
    L = ["# diskgraph GPU check", ""]
    L.append(f"- device: {env.get('device', 'none')} (cc {env.get('capability', '-')}), torch {env.get('torch')} "
             f"(CUDA {env.get('torch_cuda')}), python {env.get('python')}, {env.get('cpus')} CPUs; "
             f"DEVICE={S['params'].get('device')}, SCALE={S['params'].get('scale')}")
    L.append(f"- diskgraph imported from: {env.get('diskgraph')}")
    L.append("- steps: " + ", ".join(f"{k} {v['rc']} ({v['s']} s)" for k, v in S["steps"].items()))
    for k, why in S["skipped"].items():
        L.append(f"- skipped {k}: {why}")
    if t:
        c = t.get("counts", {})
        L.append(f"- CUDA tests: {t.get('selected')} selected, " + ", ".join(f"{n} {k}" for k, n in sorted(c.items()))
                 + (f"; skip reasons {t.get('skip_reasons')}" if t.get("skip_reasons") else "")
                 + (f"; collection errors {t.get('collection_errors')}" if t.get("collection_errors") else ""))
        if env.get("cuda_available") and c.get("skipped"):
            L.append("- **WARNING: CUDA tests were skipped on a machine with a CUDA GPU** (see summary.json)")
        for k, v in t.get("not_passed", {}).items():
            if v["outcome"] in ("failed", "error"):
                L.append(f"  - FAILED {k}: {v.get('message')}")
    g = S["gather"] or {}
    if g.get("dtypes") or g.get("skipped"):
        L += ["", f"## Gather bandwidth (GB/s of gathered rows; {g.get('rows'):,} × {g.get('dim')} table, "
                  f"{g.get('k'):,} random rows per gather, median of {g.get('reps')})", ""]
        methods = ("gpu_resident", "uva", "pinned_copy", "cpu_index_select")
        L.append("| dtype | " + " | ".join(methods) + " |")
        L.append("|---|" + "---|" * len(methods))
        for dt, r in (g.get("dtypes") or {}).items():
            cells = []
            for m in methods:
                v = r.get("methods", {}).get(m)
                cells.append(f"{v['GBps']:.2f}{'' if v['exact'] else ' (WRONG ROWS)'}" if v else
                             ("skipped" if m in r.get("skipped", {}) else "–"))
            L.append(f"| {dt} | " + " | ".join(cells) + " |")
            if r.get("error"):
                L.append(f"\nerror ({dt}): {r['error'].strip().splitlines()[-1]}")
        reasons = {w for r in (g.get("dtypes") or {}).values() for w in r.get("skipped", {}).values()}
        for w in sorted(reasons):
            L.append(f"\nskipped: {w}")
        if g.get("skipped"):
            L.append(f"\nskipped: {g['skipped']}")
    d = S["data"] or {}
    if S["train"] or d:
        L += ["", f"## Training, {S['params'].get('epochs')} epochs per tier ({d.get('graph', '')})", ""]
        if d.get("times"):
            L.append("preprocess: " + ", ".join(f"{k} {v:.1f} s" for k, v in d["times"].items()) + "\n")
        L.append("| tier | epoch | epoch_s | read_s | assemble_s | compute_s | overlap | eval_s | hit gpu/host/cold "
                 "| GPU util % mean (active) | PCIe rx MB/s max | val_acc |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for cfg, c in S["train"].items():
            gpu = c.get("gpu") or {}
            for e in c["epochs"]:
                st, h = e.get("stage_s") or {}, e.get("hit_rate") or {}
                L.append(f"| {cfg} | {e['epoch']} | {e.get('epoch_s') or 0:.2f} | {st.get('read_s', 0):.2f} | "
                         f"{st.get('assemble_s', 0):.2f} | {st.get('compute_s', 0):.2f} | {e.get('overlap') or 0:.2f} | "
                         f"{e.get('eval_s') or 0:.2f} | {h.get('gpu', 0):.2f}/{h.get('host', 0):.2f}/{h.get('cold', 0):.2f} | "
                         f"{gpu.get('util_mean', '–')} ({gpu.get('util_mean_active', '–')}) | "
                         f"{gpu.get('pcie_rx_MBps_max', '–')} | {e.get('val_acc')} |")
        if not any((c.get("gpu") or {}) for c in S["train"].values()):
            L.append("\nGPU utilisation and PCIe: not sampled (no nvidia-smi)")
    sy = S["syncs"] or {}
    if sy:
        L.append("")
        L.append(f"host syncs: {sy['skipped']}" if sy.get("skipped") else
                 f"host syncs per training step (1 epoch, pack {sy.get('pack')}, upper bound): {sy.get('syncs_per_step')} "
                 f"({sy.get('syncs')} syncs / {sy.get('steps')} steps); top sites {list((sy.get('sites') or {}).items())[:5]}")
    (out / "summary.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("install")
    s.add_argument("repo")
    s.add_argument("--wheels", default=None)
    s.add_argument("--extras", default="")
    s.add_argument("--shim", default=None)
    s.add_argument("--pin-file", default=None)
    s.add_argument("--dry-run", action="store_true")
    s.set_defaults(fn=cmd_install)
    s = sub.add_parser("env")
    s.add_argument("out")
    s.set_defaults(fn=cmd_env)
    s = sub.add_parser("gather")
    s.add_argument("out")
    s.add_argument("--device", default="cuda")
    s.add_argument("--rows", type=int, default=1_000_000)
    s.add_argument("--dim", type=int, default=128)
    s.add_argument("--k", type=int, default=100_000)
    s.add_argument("--reps", type=int, default=7)
    s.add_argument("--dtypes", default="float32,bfloat16")
    s.set_defaults(fn=cmd_gather)
    s = sub.add_parser("syncs")
    s.add_argument("out")
    s.add_argument("dataset")
    s.add_argument("--pack", default="gpu")
    s.add_argument("--hidden", type=int, default=256)
    s.set_defaults(fn=cmd_syncs)
    s = sub.add_parser("summarize")
    s.add_argument("log")
    s.add_argument("out")
    s.set_defaults(fn=cmd_summarize)
    a = p.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
