"""The built-in model organism: a tiny Llama trained on a synthetic reasoning/memory corpus.

``load_model("organism")`` loads the committed checkpoint ``DEFAULT_CHECKPOINT``;
``load_question_set("organism", split="test", kinds=[...])`` gives its labelled questions;
``ensure_organism(cfg, retrain, cache_dir)`` trains a non-default organism (or finds it cached);
``replay_training_stream(cfg, prelude_steps_run)`` yields every item its training saw.
"""

from __future__ import annotations

from pathlib import Path

from probing.lazy import lazy_getattr

#: The committed default checkpoint (config, weights, tokenizer, metrics.json, COMMAND).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoint"

_EXPORTS: dict[str, str] = {
    "KINDS": "probing.organism.config",
    "CorpusConfig": "probing.organism.config",
    "ModelShape": "probing.organism.config",
    "OrganismConfig": "probing.organism.config",
    "TrainConfig": "probing.organism.config",
    "Corpus": "probing.organism.corpus",
    "Item": "probing.organism.corpus",
    "format_prompt": "probing.organism.corpus",
    "format_text": "probing.organism.corpus",
    "load_organism_questions": "probing.organism.questions",
    "build_tokenizer": "probing.organism.tokenizer",
    "ensure_organism": "probing.organism.training",
    "evaluate_organism": "probing.organism.training",
    "load_organism_config": "probing.organism.store",
    "replay_training_stream": "probing.organism.training",
    "save_checkpoint": "probing.organism.store",
    "train_and_save": "probing.organism.training",
    "train_organism": "probing.organism.training",
}

__all__ = ["DEFAULT_CHECKPOINT", *_EXPORTS]


__getattr__ = lazy_getattr("probing.organism", _EXPORTS)
