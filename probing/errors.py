"""One exception type for user mistakes, so jobs can report them in one clear line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


class LirefError(ValueError):
    """A user-facing error: the message names the bad value and what is allowed."""


def from_mapping(cls: type[T], d: Mapping[str, Any], what: str) -> T:
    """``cls(**d)`` for a config dataclass; unknown keys raise, naming the allowed ones."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - known)
    if unknown:
        raise LirefError(f"unknown {what} setting(s) {unknown}; allowed: {sorted(known)}")
    return cls(**d)
