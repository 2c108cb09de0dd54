"""The SAE data provider resumes exactly: ``state_dict`` / ``load_state_dict`` replay."""

from __future__ import annotations

import pytest
import torch

from probing.activations.tokens import ActivationBatches, activation_batches
from probing.errors import LirefError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = torch.randn(1000, 6, generator=torch.Generator().manual_seed(0))


def chunks(_epoch: int):
    return iter(DATA.split(77))


def _provider(**kw: object) -> ActivationBatches:
    return activation_batches(chunks, 64, **{"buffer_tokens": 200, "seed": 3, **kw})


@pytest.mark.parametrize("n", [0, 1, 2, 7, 16, 40])  # 16+ batches: past the first epoch
def test_resumed_provider_gives_the_batches_of_an_uninterrupted_one(n):
    whole = _provider()
    want = [next(whole) for _ in range(n + 25)]
    first = _provider()
    for _ in range(n):
        next(first)
    state = first.state_dict()
    assert state["batches"] == n and state["generator"].dtype == torch.uint8
    resumed = _provider()
    resumed.load_state_dict(state)
    assert resumed.batches == n
    got = [next(resumed) for _ in range(25)]
    assert all(torch.equal(a, b) for a, b in zip(got, want[n:], strict=True))
    assert torch.equal(resumed.generator.get_state(), whole.generator.get_state())
    # the killed provider, drawn on, agrees too
    assert all(torch.equal(next(first), b) for b in want[n:])


def test_state_dict_is_json_plus_one_tensor():
    import json

    p = _provider()
    next(p)
    state = p.state_dict()
    tensors = {k for k, v in state.items() if isinstance(v, torch.Tensor)}
    assert tensors == {"generator"}
    json.dumps({k: v for k, v in state.items() if k not in tensors})


def test_replay_that_does_not_end_where_it_was_taken_raises():
    p = _provider()
    for _ in range(5):
        next(p)
    state = p.state_dict()
    other = activation_batches(lambda _e: iter((DATA * 2).split(77)), 64, buffer_tokens=200,
                               seed=3)
    with pytest.raises(LirefError, match="not replay the same batches.*last batch"):
        other.load_state_dict(state)  # another source
    moved = torch.Generator().manual_seed(9).get_state()
    with pytest.raises(LirefError, match="generator state"):
        _provider().load_state_dict({**state, "generator": moved})
    with pytest.raises(LirefError, match="settings"):
        _provider(seed=4).load_state_dict(state)
    with pytest.raises(LirefError, match="ends after 16 batches"):
        _provider(epochs=1).load_state_dict({**_provider(epochs=1).state_dict(), "batches": 99})
    used = _provider()
    next(used)
    with pytest.raises(LirefError, match="fresh provider"):
        used.load_state_dict(state)
