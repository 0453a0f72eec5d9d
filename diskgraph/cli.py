"""The ``diskgraph`` command line: one entry point, subcommands, config files.

Every subcommand has ``--help``; ``--config FILE`` supplies options from TOML
or YAML and ``--print-config`` shows the resolved options and exits. Bad input
ends with exit status 2 and one sentence on stderr; so does an environment
failure while writing (a full disk, a read-only filesystem, a directory this
user may not write): the sentence names the path and the option to change.
An interrupt (Ctrl-C) ends with exit status 130 and a sentence saying what the
command left behind.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from . import cli_daemon, cli_generate, cli_infer, cli_inspect, cli_train
from . import cli_plan
from .config import apply_config, render_config
from .cli_common import fanouts
from .cli_failures import Before, environment_failure, output_of
from .cli_parsers import add_preprocess, root_parser
from .store.errors import InputError
from .store.progress import set_quiet

_NEGATIVE_LIST = re.compile(r"-\d+(\s*,\s*-?\d+)*,?")


# -- entry point -----------------------------------------------------------------------------------

def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and its leaf parsers by section name."""
    parser, sub = root_parser()
    leaves = {
        **add_preprocess(sub),
        "generate": cli_generate.add_generate(sub),
        "inspect": cli_inspect.add_inspect(sub),
        "train": cli_train.add_train(sub),
        "predict": cli_infer.add_predict(sub),
        "embed": cli_infer.add_embed(sub),
        "score": cli_infer.add_score(sub),
        "plan": cli_plan.add_plan(sub),
        "serve": cli_daemon.add_serve(sub),
        "submit": cli_daemon.add_submit(sub),
        "jobs": cli_daemon.add_jobs(sub),
        "logs": cli_daemon.add_logs(sub),
        "cancel": cli_daemon.add_cancel(sub),
    }
    return parser, leaves


def _attach_negative_lists(argv: list[str], leaves: dict[str, argparse.ArgumentParser]) -> list[str]:
    """``--fanouts -1,-1`` → ``--fanouts=-1,-1``: argparse takes a value that starts with ``-`` and is not a plain
    negative number for an option, so list options whose values may start with -1 get theirs attached."""
    flags = {s for p in leaves.values() for a in p._actions if a.type is fanouts for s in a.option_strings}
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in flags and i + 1 < len(argv) and _NEGATIVE_LIST.fullmatch(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 verify failed, 2 refused input or environment,
    130 interrupted; ``train`` stopped by SIGTERM: 143)."""
    parser, leaves = build_parser()
    argv = _attach_negative_lists(sys.argv[1:] if argv is None else list(argv), leaves)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else
                        logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="diskgraph: %(message)s", stream=sys.stderr)
    set_quiet(getattr(args, "quiet", False))
    before = Before(None)
    try:
        section = getattr(args, "section", None)
        if section and args.config:
            leaf = leaves[section]
            all_dests = {a.dest for p in leaves.values() for a in p._actions}
            apply_config(args.config, section, leaf, all_dests, set(leaves))
            args = parser.parse_args(argv)
        if section and args.print_config:
            print(render_config(section, args, leaves[section]), end="")
            return 0
        args.argv = argv
        before = Before(output_of(args)[0])
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"diskgraph: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diskgraph: {before.interrupted(args)}", file=sys.stderr)
        return 130
    except Exception as e:
        message = environment_failure(e, args)
        if message is None:
            raise
        print(f"diskgraph: error: {message}", file=sys.stderr)
        return 2
