"""``diskgraph serve``, ``submit``, ``jobs``, ``logs``, ``cancel``: the training daemon and its clients."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .cli_common import add_common, positive_int
from .store.errors import InputError
from .units import parse_bytes

log = logging.getLogger("diskgraph")


def _add_connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("daemon")
    g.add_argument("--url", help="the daemon's address (default: $DISKGRAPH_URL, else ROOT/daemon.json)")
    g.add_argument("--token-file", metavar="FILE", help="file holding the bearer token (default: $DISKGRAPH_TOKEN, else ROOT/token)")
    g.add_argument("--root", metavar="DIR", help="the daemon's root directory (default: $DISKGRAPH_ROOT, else ~/.diskgraph)")


def _job_command(sub, name: str, func, help_text: str, description: str, job_help: str) -> argparse.ArgumentParser:
    """A client command taking one optional JOB id, the connection flags and the common ones."""
    p = sub.add_parser(name, help=help_text, description=description)
    p.add_argument("job", nargs="?", type=int, metavar="JOB", help=job_help)
    _add_connection(p)
    add_common(p)
    p.set_defaults(func=func, section=name)
    return p


def _client(args):
    from .daemon.client import Client

    return Client.from_options(args.url, args.token_file, args.root)


# -- serve -----------------------------------------------------------------------------------------

def add_serve(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve", help="run the training daemon (HTTP + JSON API, jobs that survive crashes)",
        description="Serve the job API on HOST:PORT: jobs (preprocess and/or train specs) are validated, stored in "
                    "ROOT/jobs.db (SQLite, WAL) and run one child process each, at most --max-concurrent at a time, in "
                    "submission order. Jobs running when the daemon died resume from their checkpoints when it starts "
                    "again; a job killed by a signal is retried --max-retries times. SIGTERM or Ctrl-C stops the daemon: "
                    "running jobs checkpoint and stay resumable. Every request needs the bearer token in ROOT/token "
                    "(mode 0600, made on first start). See docs/daemon.md.",
        epilog="Example:\n  diskgraph serve --root ~/.diskgraph --port 8765 --allow data\n"
               "  diskgraph submit job.toml && diskgraph jobs",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", metavar="DIR", help="the daemon's root: token, jobs.db, job directories "
                                                 "(default: $DISKGRAPH_ROOT, else ~/.diskgraph)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; anything else is "
                                                       "reachable from other machines and logs a warning)")
    p.add_argument("--port", type=positive_int, default=8765, help="port (default: 8765; 0 = any free port)")
    p.add_argument("--allow", action="append", metavar="DIR",
                   help="a directory jobs may read and write under (repeatable; relative spec paths start at the first; "
                        "default: the current directory)")
    p.add_argument("--max-concurrent", type=positive_int, help="jobs running at once (default: one per GPU, 1 without; "
                                                               "0 accepts jobs but starts none)")
    p.add_argument("--max-retries", type=positive_int, default=3,
                   help="restarts of a job whose process is killed by a signal (default: 3)")
    p.add_argument("--max-body", type=parse_bytes, default="1M", metavar="SIZE", help="request body cap (default: 1M)")
    p.add_argument("--stop-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="time a stopping job has to checkpoint before it is killed (default: 60)")
    p.add_argument("--detach", action="store_true", help="run in the background (log in ROOT/daemon.log); prints the address")
    add_common(p)
    p.set_defaults(func=run_serve, section="serve")
    return p


def run_serve(args: argparse.Namespace) -> int:
    from .daemon.daemon import Daemon, gpu_count
    from .daemon.layout import default_root

    root = Path(args.root) if args.root else default_root()
    if args.detach:
        return _detach(args, root)
    allowed = args.allow or [os.getcwd()]
    for a in allowed:
        if not Path(a).is_dir():
            raise InputError(f"--allow {a} is not a directory; create it or name another")
    gpus = gpu_count()
    daemon = Daemon(root, allowed_roots=allowed, host=args.host, port=args.port,
                    max_concurrent=args.max_concurrent if args.max_concurrent is not None else max(1, gpus),
                    max_retries=args.max_retries, max_body=args.max_body, stop_timeout=args.stop_timeout, gpus=gpus)
    try:
        daemon.start()
    except OSError as e:
        raise InputError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); pick another --port") from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    log.info("stopping: running jobs checkpoint and stay resumable")
    daemon.stop()
    return 0


def _detach(args: argparse.Namespace, root: Path) -> int:
    from .daemon.layout import Root

    argv = [a for a in sys.argv[1:] if a != "--detach"] if sys.argv[1:2] == ["serve"] else None
    if argv is None:
        raise InputError("--detach works from the command line only; run `diskgraph serve --detach`")
    r = Root(root)
    r.create()
    with open(r.path / "daemon.log", "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "diskgraph", *argv], stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        address = r.read_address()
        if address and address.get("pid") == proc.pid:
            print(f"{address['url']} pid {proc.pid}")
            return 0
        if proc.poll() is not None:
            raise InputError(f"the daemon exited at start (status {proc.returncode}); see {r.path / 'daemon.log'}")
        time.sleep(0.1)
    raise InputError(f"the daemon did not start listening within 60 s; see {r.path / 'daemon.log'}")


# -- submit / jobs / logs / cancel -----------------------------------------------------------------

def add_submit(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("submit", help="send a job spec (JSON or TOML) to the daemon",
                       description="Validate and queue a job: SPEC is a JSON, TOML or YAML file (or - for JSON on stdin) "
                                   "with dataset and a preprocess and/or train table of the commands' options. Prints "
                                   "the job id. See docs/daemon.md for the spec format.",
                       epilog='Example spec (TOML):\n  dataset = "data/cora"\n  [train]\n  model = "sage"\n  epochs = 2',
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", metavar="SPEC", help="spec file (.json, .toml, .yaml) or - for stdin")
    p.add_argument("--wait", action="store_true", help="wait until the job finishes; exit 0 only if it succeeded")
    _add_connection(p)
    add_common(p)
    p.set_defaults(func=run_submit, section="submit")
    return p


def _load_spec(path: str) -> dict:
    from .config import load_config_file
    from .daemon.spec import SpecError, check_nesting, too_deep

    try:
        spec = _read_spec(path) if path == "-" or Path(path).suffix.lower() == ".json" else load_config_file(path)
        check_nesting(spec, f"spec {path}")
    except RecursionError:  # the parsers recurse once per level
        raise InputError(str(too_deep(f"spec {path}"))) from None
    except SpecError as e:
        raise InputError(str(e)) from None
    return spec


def _read_spec(path: str) -> dict:
    """A JSON spec from a file, or from stdin for ``-``."""
    if path == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise InputError(f"cannot read spec {path} ({e.strerror}); check the path") from None
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise InputError(f"spec {path} is not valid JSON ({e}); fix it") from None
    if not isinstance(spec, dict):
        raise InputError(f"spec {path} must hold one JSON object")
    return spec


def run_submit(args: argparse.Namespace) -> int:
    if not args.spec:
        raise InputError("no spec given; pass a spec file: diskgraph submit job.toml")
    client = _client(args)
    job_id = client.submit(_load_spec(args.spec))
    print(job_id, flush=True)
    if not args.wait:
        return 0
    while True:
        job = client.job(job_id)
        if job["state"] in ("succeeded", "failed", "cancelled"):
            print(f"job {job_id} {job['state']}" + (f": {job['reason']}" if job["reason"] else ""), file=sys.stderr)
            return 0 if job["state"] == "succeeded" else 1
        time.sleep(1)


def add_jobs(sub) -> argparse.ArgumentParser:
    p = _job_command(sub, "jobs", run_jobs, "list the daemon's jobs, or show one",
                     "List jobs in submission order (id, state, attempts, name, the stage running: import, sample, pack, train, "
                     "predict or embed, reason), or show one job in full "
                     "(state, progress, latest metrics, checkpoint, transitions) as JSON.", "a job id: show this job in full")
    p.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"], help="only jobs in this state")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def run_jobs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.job is not None:
        print(json.dumps(client.job(args.job), indent=2))
        return 0
    jobs = client.jobs(args.state)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    print(f"{'ID':>5}  {'STATE':<10} {'TRIES':>5}  {'NAME':<24} {'STAGE':<10} REASON")
    for j in jobs:
        print(f"{j['id']:>5}  {j['state']:<10} {j['attempts']:>5}  {(j['name'] or '-')[:24]:<24} "
              f"{(j.get('stage') or '-'):<10} {j['reason'] or ''}")
    return 0


def add_logs(sub) -> argparse.ArgumentParser:
    p = _job_command(sub, "logs", run_logs, "print a job's log",
                     "Print the job's log (every attempt); -f follows it until the job finishes.", "job id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as the log grows, until the job finishes")
    return p


def run_logs(args: argparse.Namespace) -> int:
    if args.job is None:
        raise InputError("no job given; pass its id: diskgraph logs JOB")
    client = _client(args)
    offset = 0
    while True:
        page = client.log(args.job, offset)
        sys.stdout.write(page["text"])
        sys.stdout.flush()
        offset = page["next_offset"]
        if offset < page["size"]:
            continue
        if not args.follow or page["finished"]:
            return 0
        time.sleep(0.5)


def add_cancel(sub) -> argparse.ArgumentParser:
    return _job_command(sub, "cancel", run_cancel, "cancel a job", "Cancel a queued job, or stop a running one (it gets "
                        "SIGTERM and checkpoints, then is marked cancelled).", "job id")


def run_cancel(args: argparse.Namespace) -> int:
    if args.job is None:
        raise InputError("no job given; pass its id: diskgraph cancel JOB")
    out = _client(args).cancel(args.job)
    print(f"job {out['id']} {'cancelled' if out['state'] == 'cancelled' else 'is being cancelled'}")
    return 0
