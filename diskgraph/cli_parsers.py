"""The command line's root parser and the command groups a daemon job runs, shared by the CLI and the daemon.

:func:`diskgraph.cli.build_parser` builds the whole command line on :func:`root_parser` and
:func:`add_preprocess`; :func:`diskgraph.daemon.spec.leaves` takes the leaves a job runs (``preprocess all``,
``train``) from :func:`job_leaves`, built from the same option declarations (:mod:`diskgraph.cli_preprocess`,
:mod:`diskgraph.cli_train`) without the rest of the CLI, whose ``serve`` and ``submit`` lead to the daemon.
"""

from __future__ import annotations

import argparse
import sys

from . import cli_preprocess, cli_train


class Parser(argparse.ArgumentParser):
    """argparse with refusals in diskgraph's form: one line on stderr, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"diskgraph: error: {self.prog}: {message}; see `{self.prog} --help`\n")


def root_parser():
    """The ``diskgraph`` parser (with ``--version``) and its subcommand group."""
    from . import __version__

    parser = Parser(
        prog="diskgraph",
        description="Train graph neural networks on graphs larger than memory. "
                    "Start with `diskgraph generate` or `diskgraph preprocess import`, then `diskgraph inspect`.",
    )
    parser.add_argument("--version", action="version", version=f"diskgraph {__version__}")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def add_preprocess(sub) -> dict[str, argparse.ArgumentParser]:
    """``diskgraph preprocess`` and its stages; returns the stages' parsers by name."""
    pre = sub.add_parser("preprocess", help="import raw inputs, sample plans, pack features",
                         description="Preprocessing stages. Each writes a versioned directory atomically: "
                                     "import → DATASET, sample → DATASET/plans/NAME, pack → DATASET/packs/NAME; "
                                     "`all` runs them in one go.")
    pre_sub = pre.add_subparsers(dest="subcommand", metavar="STAGE")
    stages = {
        "import": cli_preprocess.add_import(pre_sub),
        "sample": cli_preprocess.add_sample(pre_sub),
        "pack": cli_preprocess.add_pack(pre_sub),
        "all": cli_preprocess.add_all(pre_sub),
    }
    pre.set_defaults(func=lambda a: _usage(pre))
    return stages


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def job_leaves() -> dict[str, argparse.ArgumentParser]:
    """Fresh parsers of the commands a daemon job runs, by the CLI's leaf name (``all``, ``train``), each the one
    the command line has (same options, same ``prog``)."""
    _, sub = root_parser()
    return {"all": add_preprocess(sub)["all"], "train": cli_train.add_train(sub)}
