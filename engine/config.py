"""Configuration files the way nProbe takes them: `flowprobe /etc/flowprobe/flowprobe.conf`.

A lone positional argument that is an existing file is read as options, one a line, equivalent to
the command line:

    # comments and blank lines are ignored
    -i=eth1                 # short or long option, value after '=' ...
    --zmq tcp://*:5556      # ... or after white space (the rest of the line, quotes stripped)
    -f=tcp port 443
    --no-promisc            # flags take no value

Options given on the command line after the file are appended (they override the file's, or add
to repeatable ones). Errors name the file and the line.
"""
from __future__ import annotations

import argparse
import os

from engine.errors import FlowprobeError, os_error_message


def is_config_file(arg: str) -> bool:
    return not arg.startswith("-") and os.path.isfile(arg)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse_line(line: str) -> tuple[str, str | None] | None:
    """'-i=eth1' / '-i eth1' / '--no-promisc' -> (option, value or None); None for blank/comment."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    cut = len(text)
    for sep in ("=", " ", "\t"):
        k = text.find(sep)
        if k != -1:
            cut = min(cut, k)
    option = text[:cut]
    rest = text[cut:]
    if not rest:
        return option, None
    if rest[0] == "=":
        value = rest[1:].strip()
    else:
        value = rest.strip()
        if value.startswith("="):          # '-i = eth1'
            value = value[1:].strip()
    if value.startswith("#"):              # '--no-promisc   # comment'
        return option, None
    if " #" in value and not value[:1] in "\"'":  # trailing comment after a value
        value = value[:value.index(" #")].rstrip()
    return option, _unquote(value)


def read_config(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The file's options as argv, every line checked against the parser."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        if isinstance(e, OSError):
            raise FlowprobeError(os_error_message(f"read configuration file {path}", e), status=2)
        raise FlowprobeError(f"{path}: not a text configuration file", status=2)
    actions = parser._option_string_actions      # option string -> argparse action
    argv: list[str] = []
    for n, line in enumerate(lines, 1):
        where = f"{path} line {n}"
        parsed = parse_line(line)
        if parsed is None:
            continue
        option, value = parsed
        if not option.startswith("-"):
            raise FlowprobeError(f"{where}: expected an option such as -i=eth1 or --zmq=URL, "
                                 f"not {option!r}", status=2)
        action = actions.get(option)
        if action is None:
            raise FlowprobeError(f"{where}: unrecognized option {option}", status=2)
        takes_value = action.nargs != 0
        if takes_value and value is None and action.nargs not in ("?", "*"):
            raise FlowprobeError(f"{where}: option {option} needs a value ({option}=VALUE)",
                                 status=2)
        if not takes_value and value is not None:
            raise FlowprobeError(f"{where}: option {option} takes no value", status=2)
        tokens = [option] if value is None else [f"{option}={value}"] if option.startswith("--") \
            else [option + value]
        try:                                     # bad values are reported with the line too
            parser.parse_args(tokens)
        except FlowprobeError as e:
            raise FlowprobeError(f"{where}: {e}", status=e.status)
        except SystemExit:                       # --help / --version in a file
            raise FlowprobeError(f"{where}: {option} does not belong in a configuration file",
                                 status=2)
        argv += tokens
    return argv


def expand_argv(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Replace a leading configuration-file argument by the options it holds."""
    if argv and is_config_file(argv[0]):
        return read_config(argv[0], parser) + list(argv[1:])
    return list(argv)
