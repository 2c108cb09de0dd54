"""One exception type for user mistakes, so jobs can report them in one clear line."""

from __future__ import annotations


class LirefError(ValueError):
    """A user-facing error: the message names the bad value and what is allowed."""
