"""The real benchmark files of ``../shared/data`` (or ``$LIREF_SHARED_DATA``); tests that read
them skip cleanly where the folder is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _shared_data() -> Path | None:
    candidates = [os.environ.get("LIREF_SHARED_DATA"),
                  str(Path(__file__).resolve().parents[2] / "shared" / "data")]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


SHARED = _shared_data()


def shared(rel: str) -> Path:
    """``SHARED / rel``, or skip the test when that file is not available."""
    if SHARED is None or not (SHARED / rel).exists():
        pytest.skip(f"shared data file {rel} not available (set LIREF_SHARED_DATA)")
    return SHARED / rel
