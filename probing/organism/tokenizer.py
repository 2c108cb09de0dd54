"""Word-level tokenizer of the organism language, saved as a HuggingFace fast tokenizer.

Words are separated by single spaces. A newline becomes its own token ``"##\\n"`` and the word
right after it is glued to it (``"##A:"``): the decoder (WordPiece with prefix ``##``) joins
tokens with spaces except before ``##`` tokens, so ``decode(encode(text)) == text`` for every
single-spaced text of the language. A trailing space (the prompt ``"...\\nA: "``) is dropped:
the prompt's last token is ``"##A:"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["SPECIAL_TOKENS", "NEWLINE", "build_tokenizer", "save_tokenizer", "vocab_of"]

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
NEWLINE = "##\n"


def vocab_of(words: Sequence[str]) -> dict[str, int]:
    """Token ids: ``SPECIAL_TOKENS`` first, then ``words`` (duplicates keep the first id)."""
    vocab: dict[str, int] = {}
    for w in (*SPECIAL_TOKENS, *words):
        vocab.setdefault(w, len(vocab))
    return vocab


def build_tokenizer(words: Sequence[str]) -> Any:
    """A ``tokenizers.Tokenizer`` over ``SPECIAL_TOKENS + words`` (ids in that order)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = vocab_of(words)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace("\n", " ##\n ##"), normalizers.Replace(Regex(r" ##\z"), "")]
    )
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed")
    # WordPiece keeps the prefix of a first token; the Replace drops it (completions may
    # start with the newline).
    tok.decoder = decoders.Sequence(
        [decoders.WordPiece(prefix="##", cleanup=False), decoders.Replace("##", "")]
    )
    return tok


def save_tokenizer(words: Sequence[str], folder: str | Path) -> Any:
    """Build the tokenizer and save it (``tokenizer.json`` etc.) so that
    ``AutoTokenizer.from_pretrained(folder)`` loads it; returns the HF tokenizer."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(words),
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        clean_up_tokenization_spaces=False,
        padding_side="right",
        model_max_length=512,
    )
    hf.save_pretrained(str(folder))
    return hf
