"""Token-activation cache: contents, reuse, corruption detection, locking, batching."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from probing.activations.tokens import (
    MANIFEST_FILENAME,
    TokenActivationCache,
    TokenStreamConfig,
    activation_batches,
    cache_key,
    get_or_build_token_cache,
    iter_residual_tokens,
    text_batches,
    token_chunks,
    token_mask,
)
from probing.errors import LirefError
from probing.fingerprint import model_fingerprint
from probing.model.hooks import forward_residual
from tests.tiny_models import PROMPTS, ForwardCounter

TEXTS = PROMPTS * 6 + ["the capital city of red is blue . " * 12]  # one long document


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bos_tok(tiny_llama):
    """The tiny tokenizer, made to prepend BOS like most real LM tokenizers."""
    import copy

    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tiny_llama[1])
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    assert tok("Q: what")["input_ids"][0] == tok.bos_token_id
    return tok


def _stream(**kw: object) -> TokenStreamConfig:
    return TokenStreamConfig(**{"layer": 1, "context_size": 16, "batch_size": 4,
                                "shard_tokens": 40, **kw})  # type: ignore[arg-type]


def test_chunks_split_long_documents_and_keep_bos(bos_tok):
    chunks = list(token_chunks(bos_tok, TEXTS, 16))
    assert all(1 < len(c) <= 16 for c in chunks)
    ids = bos_tok(TEXTS[-1])["input_ids"]
    assert len(ids) > 32  # the long document is split into several windows...
    assert len(chunks) > len(TEXTS)
    assert all(c[0] == bos_tok.bos_token_id for c in chunks)  # ...each starting with BOS
    assert sum(len(c) - 1 for c in chunks) == sum(len(bos_tok(t)["input_ids"]) - 1 for t in TEXTS)


def test_stream_drops_padding_and_bos(tiny_llama, bos_tok):
    model, tok = tiny_llama[0], bos_tok
    stream = _stream(drop_bos=True)
    got = torch.cat(list(iter_residual_tokens(model, tok, TEXTS, stream)))
    expected = []
    for ids, mask in text_batches(tok, TEXTS, 16, 4):
        acts = forward_residual(model, ids, mask, [1])[1]
        keep = mask.bool() & (ids != tok.bos_token_id)
        expected.append(acts[keep])
    assert torch.equal(got, torch.cat(expected))
    n_real = sum(len(c) for c in token_chunks(tok, TEXTS, 16))
    with_bos = torch.cat(list(iter_residual_tokens(model, tok, TEXTS, _stream(drop_bos=False))))
    assert with_bos.shape[0] == n_real == got.shape[0] + len(list(token_chunks(tok, TEXTS, 16)))


def test_without_bos_the_first_position_is_dropped(tiny_llama):
    """A tokenizer that adds no BOS (SmolLM2's GGUF one): each window's first token takes the
    attention sink's massive activation and is left out like a BOS, whatever the padding side."""
    model, tok = tiny_llama
    assert tok("Q: what")["input_ids"][0] != tok.bos_token_id  # this one adds none
    got = torch.cat(list(iter_residual_tokens(model, tok, TEXTS, _stream(drop_bos=True))))
    windows = list(token_chunks(tok, TEXTS, 16))
    assert got.shape[0] == sum(len(c) - 1 for c in windows)
    expected = []
    for ids, mask in text_batches(tok, TEXTS, 16, 4):
        acts = forward_residual(model, ids, mask, [1])[1]
        keep = mask.bool().clone()
        keep[:, 0] = False  # right padded: the first position of every row
        expected.append(acts[keep])
    assert torch.equal(got, torch.cat(expected))
    left = torch.tensor([[0, 0, 7, 8, 9], [5, 6, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert token_mask(left, mask, None, True).tolist() == [[False] * 3 + [True] * 2,
                                                            [False] + [True] * 4]
    assert token_mask(left, mask, None, False).tolist() == mask.bool().tolist()


def test_cache_manifest_contents_and_shards(tiny_llama, tmp_path):
    model, tok = tiny_llama
    cache, built = get_or_build_token_cache(model, tok, TEXTS, tmp_path, _stream(), "fp123",
                                            {"source": "texts"})
    assert built
    m = cache.manifest
    assert (m.layer, m.corpus_fingerprint, m.dtype, m.d_model) == (1, "fp123", "float32", 32)
    assert m.model_fingerprint == model_fingerprint(model) and m.model_id
    assert len(cache) > 1 and all(s.n_tokens <= 40 for s in m.shards)  # bounded shards
    streamed = torch.cat(list(iter_residual_tokens(model, tok, TEXTS, _stream())))
    assert m.n_tokens == streamed.shape[0]
    assert torch.equal(cache.read_all(), streamed)
    on_disk = json.loads((cache.path / MANIFEST_FILENAME).read_text())
    assert on_disk["n_tokens"] == m.n_tokens and on_disk["shards"][0]["sha256"]
    assert not list(tmp_path.glob(".*partial*"))  # built under a temp name, renamed into place


def test_second_call_reuses_the_cache_without_forward_passes(tiny_llama, tmp_path):
    model, tok = tiny_llama
    counter = ForwardCounter(model)
    try:
        first, built1 = get_or_build_token_cache(model, tok, TEXTS, tmp_path, _stream(), "fp")
        n_first = counter.n
        second, built2 = get_or_build_token_cache(model, tok, TEXTS, tmp_path, _stream(), "fp")
    finally:
        counter.close()
    assert built1 and not built2 and n_first > 0
    assert counter.n == n_first  # no forward pass for the second call
    assert second.path == first.path
    # other layer / corpus / max_tokens -> other folder; shard size and batch size do not matter
    assert cache_key("m", "c", _stream()) != cache_key("m", "c", _stream(layer=2))
    assert cache_key("m", "c", _stream()) != cache_key("m", "d", _stream())
    assert cache_key("m", "c", _stream()) != cache_key("m", "c", _stream(max_tokens=10))
    assert cache_key("m", "c", _stream()) == cache_key("m", "c", _stream(shard_tokens=7,
                                                                         batch_size=2))


def test_corrupted_and_truncated_shards_raise_naming_the_file(tiny_llama, tmp_path):
    model, tok = tiny_llama
    cache, _ = get_or_build_token_cache(model, tok, TEXTS, tmp_path, _stream(), "fp")
    shard = cache.path / cache.manifest.shards[1].file
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # same size, one flipped byte in the tensor data
    shard.write_bytes(bytes(data))
    with pytest.raises(LirefError, match=f"{shard.name}.*checksum"):
        list(TokenActivationCache(cache.path).iter_shards())
    shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(LirefError, match=f"{shard.name}.*truncated"):
        TokenActivationCache(cache.path).verify()
    shard.unlink()
    with pytest.raises(LirefError, match=f"{shard.name}.*missing"):
        TokenActivationCache(cache.path).load_shard(1)


def test_corrupted_manifest_raises_and_incomplete_folder_is_rebuilt(tiny_llama, tmp_path):
    model, tok = tiny_llama
    cache, _ = get_or_build_token_cache(model, tok, TEXTS, tmp_path, _stream(), "fp")
    manifest = cache.path / MANIFEST_FILENAME
    manifest.write_text(manifest.read_text()[:50])
    with pytest.raises(LirefError, match="manifest.json"):
        TokenActivationCache(cache.path)
    manifest.unlink()  # a folder without manifest = an interrupted build: rebuilt, not trusted
    stale = tmp_path / f".{cache.path.name}.partial-999999"  # a crashed builder's temp folder
    stale.mkdir()
    again, built = get_or_build_token_cache(model, tok, TEXTS, tmp_path, _stream(), "fp")
    assert built and again.path == cache.path and again.n_tokens == cache.n_tokens
    assert not stale.exists()


def test_parallel_builders_build_once(tiny_llama, tmp_path):
    model, tok = tiny_llama
    results: list[tuple[Path, bool]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            c, built = get_or_build_token_cache(model, tok, TEXTS, tmp_path, _stream(), "fp")
            c.verify()
            results.append((c.path, built))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(b for _, b in results) == [False, False, True]
    assert len({p for p, _ in results}) == 1


def test_activation_batches_shuffle_cover_and_repeat():
    data = torch.arange(1000, dtype=torch.float32).unsqueeze(1).repeat(1, 3)

    def chunks(_epoch: int):
        return iter(data.split(77))

    one_epoch = list(activation_batches(chunks, 64, buffer_tokens=200, seed=0, epochs=1))
    assert all(b.shape == (64, 3) for b in one_epoch[:-1])
    seen = torch.cat(one_epoch)[:, 0]
    assert torch.equal(seen.sort().values, data[:, 0])  # every token exactly once
    assert not torch.equal(seen, data[:, 0])  # shuffled
    again = torch.cat(list(activation_batches(chunks, 64, buffer_tokens=200, seed=0, epochs=1)))
    assert torch.equal(again[:, 0], seen)  # seeded
    forever = activation_batches(chunks, 64, buffer_tokens=200, seed=0)
    assert all(next(forever).shape == (64, 3) for _ in range(40))  # > 2 epochs, exact sizes


def test_empty_source_and_bad_settings_raise():
    with pytest.raises(LirefError, match="empty"):
        next(activation_batches(lambda _e: iter([]), 8))
    with pytest.raises(LirefError, match="context_size"):
        TokenStreamConfig(layer=0, context_size=1)
    with pytest.raises(LirefError, match="dtype"):
        TokenStreamConfig(layer=0, dtype="int3")


def test_layer_out_of_range_raises(tiny_llama, tmp_path):
    model, tok = tiny_llama
    with pytest.raises(LirefError, match="out of range"):
        get_or_build_token_cache(model, tok, TEXTS, tmp_path, _stream(layer=7), "fp")


def test_corpus_sources(tmp_path, monkeypatch):
    from probing.activations.corpus import PROMPT_TEMPLATE, load_corpus
    from tests.job_fixtures import write_questions

    txt = tmp_path / "c.txt"
    txt.write_text("first document\n\nsecond document\n")
    c = load_corpus("file", path=str(txt))
    assert c.texts == ["first document", "second document"]
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"body": "a"}\n{"body": "b"}\n')
    assert load_corpus("file", path=str(jl), text_field="body").texts == ["a", "b"]
    with pytest.raises(LirefError, match="no field 'text'"):
        load_corpus("file", path=str(jl))
    with pytest.raises(LirefError, match="not found"):
        load_corpus("file", path=str(tmp_path / "nope.txt"))
    qs = write_questions(tmp_path / "q.jsonl", n_per_label=3)
    both = load_corpus("file", path=str(txt), question_sets=[{"name": "jsonl", "path": str(qs)}])
    assert len(both) == 2 + 6 and both.texts[2].startswith("Q: ") and both.texts[2].endswith(
        "\nA: ")
    assert PROMPT_TEMPLATE == "Q: {question}\nA: "
    assert both.fingerprint != c.fingerprint
    organism = load_corpus("organism", max_texts=50)
    assert len(organism) == 50 and all(t.startswith("Q: ") for t in organism.texts)
    assert organism.fingerprint == load_corpus("organism", max_texts=50).fingerprint
    train, held = organism.split(10, seed=0)
    assert len(train) == 40 and len(held) == 10
    assert sorted(train.texts + held.texts) == sorted(organism.texts)  # a partition
    assert train.fingerprint != held.fingerprint
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LirefError, match="cannot load HF data set"):
        load_corpus("hf", name="liref-test/no-such-dataset")
    with pytest.raises(LirefError, match="unknown corpus source"):
        load_corpus("web")


def test_skip_tokens_drops_the_head_without_its_forward_passes(tiny_llama):
    model, tok = tiny_llama
    full = torch.cat(list(iter_residual_tokens(model, tok, TEXTS, _stream(max_tokens=150))))
    counter = ForwardCounter(model)
    try:
        tail = torch.cat(list(iter_residual_tokens(model, tok, TEXTS, _stream(max_tokens=150),
                                                   skip_tokens=100)))
    finally:
        counter.close()
    assert full.shape[0] == 150 and torch.equal(tail, full[100:])
    n_batches = len(list(text_batches(tok, TEXTS, 16, 4)))
    assert 0 < counter.n < n_batches  # the batches before token 100 were not run


def test_interrupted_build_resumes_from_complete_shards(tiny_llama, tmp_path, monkeypatch):
    import probing.activations.tokens as tokens

    model, tok = tiny_llama
    whole, _ = get_or_build_token_cache(model, tok, TEXTS, tmp_path / "whole", _stream(), "fp")
    real = tokens.iter_residual_tokens

    def dies_after_three_chunks(*args, **kwargs):
        for i, chunk in enumerate(real(*args, **kwargs)):
            if i == 3:
                raise KeyboardInterrupt
            yield chunk

    monkeypatch.setattr(tokens, "iter_residual_tokens", dies_after_three_chunks)
    with pytest.raises(KeyboardInterrupt):
        get_or_build_token_cache(model, tok, TEXTS, tmp_path / "cut", _stream(), "fp")
    monkeypatch.setattr(tokens, "iter_residual_tokens", real)
    (folder,) = [p for p in (tmp_path / "cut").iterdir() if p.is_dir()]
    partial = json.loads((folder / MANIFEST_FILENAME).read_text())
    assert not partial["complete"] and len(partial["shards"]) >= 1
    with pytest.raises(LirefError, match="incomplete"):
        TokenActivationCache(folder)
    done_tokens = sum(s["n_tokens"] for s in partial["shards"])
    counter = ForwardCounter(model)
    try:
        resumed, built = get_or_build_token_cache(model, tok, TEXTS, tmp_path / "cut", _stream(),
                                                  "fp")
    finally:
        counter.close()
    assert built and resumed.path == folder
    assert torch.equal(resumed.read_all(), whole.read_all())
    # the complete shards were kept as they were, and their tokens not computed again
    kept = resumed.manifest.shards[: len(partial["shards"])]
    assert [asdict(s) for s in kept] == partial["shards"]
    seen, skipped = 0, 0
    for _ids, mask in text_batches(tok, TEXTS, 16, 4):
        seen += int(mask.sum())  # no BOS in this tokenizer: every real token is kept
        skipped += seen <= done_tokens
    assert skipped >= 1 and counter.n == len(list(text_batches(tok, TEXTS, 16, 4))) - skipped


def test_damaged_manifest_is_discarded_and_rebuilt(tiny_llama, tmp_path, caplog):
    model, tok = tiny_llama
    cache, _ = get_or_build_token_cache(model, tok, TEXTS, tmp_path, _stream(), "fp")
    manifest = cache.path / MANIFEST_FILENAME
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "version": 99}))
    with pytest.raises(LirefError, match=f"{cache.path}.*version 99.*delete the folder"):
        TokenActivationCache(cache.path)
    with caplog.at_level("WARNING"):
        again, built = get_or_build_token_cache(model, tok, TEXTS, tmp_path, _stream(), "fp")
    assert built and "discarding the entry" in caplog.text
    assert torch.equal(again.read_all(), cache.read_all())
