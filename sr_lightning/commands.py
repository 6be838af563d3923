"""The one entry style of the command-line tools: jsonargparse, the parser LightningCLI uses.

Each tool's options can also come from a YAML file (``--config FILE``: keys are the option names
with underscores, e.g. ``batch_size: 64``), options are never abbreviated, and a bad option is a
usage line and one ``error:`` line, as with ``train.py``.
"""

from __future__ import annotations

from argparse import ArgumentTypeError
from collections.abc import Callable, Sequence
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser


def command_parser(prog: str, description: str, config_file: bool = True) -> ArgumentParser:
    """A tool's parser; ``config_file=False`` for a tool whose ``--config`` means something else."""
    parser = ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    if config_file:
        parser.add_argument("--config", action=ActionConfigFile, help="read options from a YAML file")
    return parser


def comma_list(item: Callable[[Any], Any] = str) -> Callable[[str | Sequence[Any]], tuple]:
    """An option type: a comma list on the command line (``*,+,-``), a list in a YAML options file."""

    def parse(value: str | Sequence[Any]) -> tuple:
        items = value.split(",") if isinstance(value, str) else value  # parsed values come back for validation
        return tuple(item(x) for x in items if x != "")

    return parse


def shard(text: str | Sequence[int]) -> tuple[int, int]:
    """``I/N``: the I-th of N parts (0-based); a parsed pair comes back for validation."""
    parts = text.split("/") if isinstance(text, str) else list(text)
    try:
        index, count = parts
        value = int(index), int(count)
    except ValueError:
        raise ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    if not 0 <= value[0] < value[1]:
        raise ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return value
