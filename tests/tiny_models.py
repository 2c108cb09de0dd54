"""Tiny random models of every supported family, saved with save_pretrained (no download)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from probing.model.blocks import decoder_layers

WORDS = ("Q: A: the a of is what who where when how many capital city colour red blue green "
         "one two three four five six seven eight nine zero plus minus times equals sum "
         "of and or not if then number 0 1 2 3 4 5 6 7 8 9 + - * = ? . ,").split()
VOCAB_SIZE = 320
D = 32

COMMON = dict(vocab_size=VOCAB_SIZE, hidden_size=D, intermediate_size=64, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)

FAMILY_CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=None),
    "qwen2": lambda: Qwen2Config(**COMMON),
    "gemma2": lambda: Gemma2Config(**COMMON, head_dim=8, sliding_window=64),
    "olmo2": lambda: Olmo2Config(**COMMON),
    "phi3": lambda: Phi3Config(**{**COMMON, "num_key_value_heads": 4}),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB_SIZE, n_embd=D, n_layer=3, n_head=4,
                               n_positions=128, bos_token_id=1, eos_token_id=2),
    "gpt_neox": lambda: GPTNeoXConfig(vocab_size=VOCAB_SIZE, hidden_size=D, intermediate_size=64,
                                      num_hidden_layers=3, num_attention_heads=4,
                                      max_position_embeddings=128, bos_token_id=1,
                                      eos_token_id=2),
}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few words (GPT-2 style, like most real LMs)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([" ".join(WORDS)] * 4 + ["Q: what\nA: "] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")


def save_tiny_model(family: str, folder: Path, seed: int = 0) -> Path:
    """Build a random tiny model of ``family`` and save it (weights + tokenizer) in ``folder``."""
    import torch

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(FAMILY_CONFIGS[family]())
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


PROMPTS = [
    "Q: what is the capital city of the blue sum ?\nA: ",
    "Q: 3 + 4 =\nA: ",
    "Q: how many\nA: ",
    "Q: if one plus two equals three then what is four plus five ? what is the number\nA: ",
    "Q: who\nA: ",
]


class ForwardCounter:
    """Counts forward passes through decoder block 0 (every forward reaches it)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.n = 0
        self.handle = decoder_layers(model)[0].register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.n += 1

    def close(self) -> None:
        self.handle.remove()
