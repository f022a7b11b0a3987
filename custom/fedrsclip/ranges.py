"""Numeric ranges declared next to the settings they bound, checked by one generic loop.

A setting declares its range in its field: ``lr: float = ranged(0.001, "(0, inf)")``. The interval is written as in
mathematics, ``(`` / ``)`` excluding and ``[`` / ``]`` including the bound; ``inf`` means no upper bound. A value must
be finite whatever its range (NaN and inf are refused: they only ever fail later, far from the setting). A field whose
type allows None may also be null. :func:`check_ranges` checks every ranged field of a (possibly frozen) dataclass.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["Interval", "ranged", "check_ranges"]


@dataclass(frozen=True)
class Interval:
    """A real interval such as ``(0, 1]``; bounds may be ``-inf`` / ``inf`` (then open)."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def parse(cls, text: str) -> "Interval":
        """``"(0, 1]"`` -> Interval(0, 1, False, True). Raises ValueError for anything else."""
        body = text.strip()
        if len(body) < 5 or body[0] not in "([" or body[-1] not in ")]" or body.count(",") != 1:
            raise ValueError(f"an interval looks like '(0, 1]', got {text!r}")
        low, high = (float(part) for part in body[1:-1].split(","))
        if not low <= high:
            raise ValueError(f"interval {text!r}: the lower bound exceeds the upper one")
        return cls(low, high, body[0] == "[" and math.isfinite(low), body[-1] == "]" and math.isfinite(high))

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def describe(self) -> str:
        """Words for an error message: "positive", ">= 1", "between 0 and 1 (0 < x <= 1)"."""
        low, high = _number(self.low), _number(self.high)
        low_op, high_op = ("<=" if self.low_closed else "<"), ("<=" if self.high_closed else "<")
        if math.isfinite(self.low) and math.isfinite(self.high):
            return f"between {low} and {high} ({low} {low_op} x {high_op} {high})"
        if math.isfinite(self.low):
            if (self.low, self.low_closed) == (0, False):
                return "positive"
            return f"{low_op.replace('<', '>')} {low}"
        if math.isfinite(self.high):
            return f"{high_op} {high}"
        return "a finite number"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def ranged(default: Any, interval: str) -> Any:
    """A dataclass field with ``default`` whose value must lie in ``interval`` (see the module docstring)."""
    return field(default=default, metadata={"range": Interval.parse(interval)})


def check_ranges(obj: Any, prefix: str = "") -> None:
    """Check every field of the dataclass ``obj`` that declares a range; ``prefix`` names its section ("ot.").

    Raises ValueError naming the setting, its range and the value (a bool or a non-number counts as out of range).
    """
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        interval = f.metadata.get("range")
        if interval is None:
            continue
        value = getattr(obj, f.name)
        nullable = type(None) in typing.get_args(hints.get(f.name))
        if value is None and nullable:
            continue
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value in interval
        )
        if not ok:
            finite = (
                ""
                if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isfinite(value)
                else " (NaN and inf are refused)"
            )
            raise ValueError(
                f"{prefix}{f.name} must be {interval.describe()}{' or null' if nullable else ''}; got {value!r}{finite}"
            )
