"""argparse value types shared by every ``archspec`` subcommand (each raises ArgumentTypeError naming the text),
and the options several subcommands take alike."""

from __future__ import annotations

import argparse
import math
import re

_FLOP_SUFFIXES = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_FLOP_PATTERN = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKMGTPE]?)\s*(?:FLOPS?|flops?)?\s*")


def parse_flops(text: str) -> float:
    """``"1e12"`` -> 1e12, ``"2.5T"`` -> 2.5e12, ``"300G"`` -> 3e11 (K, M, G, T, P, E; k = K). Must be > 0.

    Raises argparse.ArgumentTypeError (a ValueError) naming the text and the accepted forms.
    """
    match = _FLOP_PATTERN.fullmatch(text)
    value = float(match.group(1)) * _FLOP_SUFFIXES[match.group(2).upper()] if match else math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(
            f"expected a positive FLOP count such as 1e12, 2.5T or 300G, got {text!r}")
    return value


def _number(text: str, kind: type, minimum: float, expected: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        value = math.nan
    if not value >= minimum or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _number(text, int, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _number(text, int, 0, "a non-negative integer")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text, float, 0.0, "a positive number")
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """``"512,1024"`` -> [512, 1024]: comma-separated positive integers."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 512,1024, got {text!r}")
    return values


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    return _number(text, float, 0.0, "a number >= 0")


def batches_or_all(text: str) -> int | str:
    """A positive integer, or ``all``."""
    return "all" if text.strip().lower() == "all" else positive_int(text)


def token_ids(text: str) -> list[int]:
    """``"1,2,3"`` -> [1, 2, 3]: comma-separated integers (their range is the model's to check)."""
    try:
        ids = [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        ids = []
    if not ids:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids such as 1,2,3, got {text!r}")
    return ids


def add_accelerator(parser: argparse.ArgumentParser) -> None:
    """``--accelerator cpu|gpu|auto`` (default auto), as Lightning's Trainer takes it."""
    parser.add_argument("--accelerator", choices=["cpu", "gpu", "auto"], default="auto")
