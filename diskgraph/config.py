"""Config files for the command line: any option can come from TOML (or YAML).

A config file holds option names (dashes or underscores) at the top level and
in tables named after commands::

    memory_budget = "2GiB"        # applies to every command that has the option

    [import]                      # `diskgraph preprocess import`
    npz = "../shared/datasets/cora/data.npz"
    out = "data/cora"

    [generate]
    nodes = 100000

Precedence: command-line flags > the command's table > top-level keys >
built-in defaults. An unknown key is an error; a top-level key that only other
commands know is ignored.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .store.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

META_DESTS = {"config", "print_config", "quiet", "verbose", "func", "command", "subcommand", "section", "help"}


def load_config_file(path: str) -> dict:
    """Parse a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config file into a dict.

    Raises:
        InputError: the file is missing or does not parse.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file {p} does not exist; check the path given to --config")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise InputError(f"config file {p} is YAML but PyYAML is not installed; install diskgraph[yaml] or use TOML") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise InputError(f"config file {p} is not valid YAML ({str(e).splitlines()[0]}); fix it") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"config file {p} is not valid TOML ({e}); fix it") from None
    if not isinstance(data, dict):
        raise InputError(f"config file {p} must hold a table of options at the top level")
    return data


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in META_DESTS and a.dest != argparse.SUPPRESS}


def _check_type(key: str, value, action: argparse.Action, path: str):
    flag = action.option_strings[-1] if action.option_strings else key
    is_flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
    if is_flag:
        if not isinstance(value, bool):
            raise InputError(f"config file {path}: {key} must be true or false (it sets {flag})")
        return value
    if isinstance(value, (dict, list)):
        if isinstance(value, list) and all(isinstance(v, (int, float, str)) for v in value):
            return ",".join(str(v) for v in value)
        raise InputError(f"config file {path}: {key} must be a single value (it sets {flag})")
    if isinstance(value, bool):
        raise InputError(f"config file {path}: {key} must be a value for {flag}, not true/false")
    # check values here, naming the file: argparse checks neither the choices of defaults nor,
    # for string defaults, names where a bad one came from
    if action.type is not None:
        try:
            value = action.type(str(value))
        except (argparse.ArgumentTypeError, ValueError, TypeError, OverflowError):
            raise InputError(f"config file {path}: {key} = {value!r} is not a valid value for {flag}") from None
    if action.choices is not None and value not in action.choices:
        raise InputError(f"config file {path}: {key} = {value!r} is not one of {', '.join(map(str, action.choices))} "
                         f"(it sets {flag})")
    return value


def apply_config(path: str, section: str, parser: argparse.ArgumentParser, all_dests: set[str],
                 all_sections: set[str] | None = None) -> dict:
    """Set ``parser``'s defaults from the config file; returns the values applied.

    ``all_sections`` (when given) are the table names any command reads; another table is refused.

    Raises:
        InputError: unknown keys or tables, or values of the wrong type.
    """
    data = load_config_file(path)
    known = _actions(parser)
    values = {}
    sections = {k for k, v in data.items() if isinstance(v, dict)}
    unknown_tables = sorted(sections - all_sections) if all_sections is not None else []
    if unknown_tables:
        tables = ", ".join(f"[{t}]" for t in sorted(all_sections))
        raise InputError(f"config file {path}: unknown table [{unknown_tables[0]}]; the tables are {tables}")
    for key, value in data.items():
        if key in sections:
            continue
        dest = key.replace("-", "_")
        if dest in known:
            values[dest] = _check_type(key, value, known[dest], path)
        elif dest not in all_dests:
            raise InputError(f"config file {path}: unknown option {key!r}; see `diskgraph {section} --help` for the options")
    table = data.get(section, {})
    if not isinstance(table, dict):
        table = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        if dest not in known:
            raise InputError(f"config file {path}: [{section}] has unknown option {key!r}; see the command's --help for the options")
        values[dest] = _check_type(key, value, known[dest], path)
    parser.set_defaults(**values)
    return values


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def render_config(section: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The resolved options of one command as a TOML table (unset options as comments)."""
    lines = [f"[{section}]"]
    for dest in _actions(parser):
        v = getattr(args, dest, None)
        if v is None:
            lines.append(f"# {dest} = (not set)")
        else:
            lines.append(f"{dest} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"
