"""The built-in model organism: a tiny Llama trained on a synthetic reasoning/memory corpus."""

from __future__ import annotations

from pathlib import Path

#: The committed default checkpoint (config, weights, tokenizer, metrics.json, COMMAND).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoint"

__all__ = ["DEFAULT_CHECKPOINT"]
