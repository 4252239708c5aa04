"""The command line's value types (argparse ``type=``), one implementation each: a bad value is
refused by argparse before anything runs (exit 2), the message naming what was expected."""

from __future__ import annotations

import argparse
import math

__all__ = ["line_count", "positive_seconds", "soak_seconds"]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number of seconds: {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """A deadline or an interval: more than 0 seconds."""
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"seconds must be more than 0: {text!r}")
    return value


def soak_seconds(text: str) -> float:
    """A canary's soak: 0 (none) to an hour."""
    value = _seconds(text)
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"give 0 (no soak) to 3600 seconds: {text!r}")
    return value


def line_count(text: str) -> int:
    """A number of lines: 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of lines (0 or more), got {text!r}")
    return value
