"""Batched greedy decoding: left padding must not change any completion."""

from __future__ import annotations

import pytest
import torch

from probing.evaluation.generation import greedy_generate

WORDS = ["Q:", "##A:", "##\n", "##", "a", "b", "c", "d", "e", "f", "g", "?"]


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, object]:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from probing.organism.tokenizer import build_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(WORDS), pad_token="<pad>",
                                  unk_token="<unk>", eos_token="<eos>",
                                  clean_up_tokenization_spaces=False)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # peaked logits: no near-ties between batched and single runs
        model.lm_head.weight.mul_(50)
    return model, tok


PROMPTS = ["Q: a\nA: ", "Q: b c d e f g a b\nA: ", "Q: c c\nA: ", "Q: g f e d\nA: ", "Q: a b\nA: "]


def test_batched_equals_one_by_one(tiny) -> None:
    model, tok = tiny
    batched = greedy_generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=3, stop_at=None)
    single = [greedy_generate(model, tok, [p], max_new_tokens=6, stop_at=None)[0] for p in PROMPTS]
    assert batched == single
    assert all(isinstance(s, str) and s for s in batched)


def test_completion_only_and_order(tiny) -> None:
    model, tok = tiny
    out = greedy_generate(model, tok, PROMPTS, max_new_tokens=4, batch_size=2, stop_at=None)
    rev = greedy_generate(model, tok, PROMPTS[::-1], max_new_tokens=4, batch_size=2, stop_at=None)
    assert out == rev[::-1]
    assert all(len(tok(s).input_ids) <= 4 for s in out)  # completions only


def test_stop_at_cuts(tiny) -> None:
    model, tok = tiny
    full = greedy_generate(model, tok, PROMPTS, max_new_tokens=8, stop_at=None)
    for stop in ("a", "\n"):
        cut = greedy_generate(model, tok, PROMPTS, max_new_tokens=8, stop_at=stop)
        for f, c in zip(full, cut, strict=True):
            assert stop not in c
            assert f.startswith(c)
            assert c == (f[: f.index(stop)] if stop in f else f)


def test_padding_side_restored_and_empty(tiny) -> None:
    model, tok = tiny
    tok.padding_side = "right"
    assert greedy_generate(model, tok, [], max_new_tokens=3) == []
    greedy_generate(model, tok, PROMPTS[:2], max_new_tokens=2)
    assert tok.padding_side == "right"


def test_bad_arguments(tiny) -> None:
    from probing.errors import LirefError

    model, tok = tiny
    with pytest.raises(LirefError, match="max_new_tokens"):
        greedy_generate(model, tok, PROMPTS, max_new_tokens=0)
