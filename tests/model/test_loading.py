from __future__ import annotations

import pytest
import torch

from probing.errors import LirefError
from probing.model.blocks import decoder_layers, num_layers
from probing.model.loading import load_model, resolve_dtype
from tests.tiny_models import FAMILY_CONFIGS, PROMPTS, VOCAB_SIZE, D, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = sorted(FAMILY_CONFIGS)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_loads_and_exposes_its_blocks(tiny_model_dir, family):
    model, tok = load_model(str(tiny_model_dir(family)))
    assert not model.training
    assert model.config.model_type == family
    assert num_layers(model) == 3
    assert len(decoder_layers(model)) == 3
    assert tok.pad_token is not None
    assert all(not p.requires_grad for p in model.parameters())


def test_dtype_is_applied(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir("llama")), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_unknown_dtype_is_named():
    with pytest.raises(LirefError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")


def test_unknown_local_path_gives_one_clear_error(tmp_path):
    with pytest.raises(LirefError, match="model folder .* does not exist") as err:
        load_model(str(tmp_path / "no-such-model"))
    assert "no-such-model" in str(err.value)


def test_hub_name_without_network_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LirefError, match="Hub may be unreachable") as err:
        load_model("liref-nonexistent-org/no-such-model")
    assert "local folder" in str(err.value)


def test_unsupported_architecture_is_named(tiny_llama):
    model, _ = tiny_llama

    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "bert"})()

    with pytest.raises(LirefError, match="unsupported architecture 'bert'"):
        decoder_layers(Fake())


def test_device_map_passes_through_to_accelerate(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    model, _ = load_model(str(tiny_model_dir("llama")), device_map={"": "cpu"})
    assert seen["device_map"] == {"": "cpu"}
    assert next(model.parameters()).device.type == "cpu"


# ---------------------------------------------------------------------------------------------
# Any decoder-only model: blocks found generically, extraction exact against HF hidden_states.
# ---------------------------------------------------------------------------------------------

V = VOCAB_SIZE
_TOK = dict(vocab_size=V, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_L = dict(hidden_size=D, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=128, **_TOK)
_MOE = dict(num_experts_per_tok=2)

#: model_type -> (config class in transformers, tiny config kwargs, the base model's final-norm
#: attribute (None: the family has none)). 3 blocks, width 32 each.
WIDE_FAMILIES: dict[str, tuple[str, dict, str | None]] = {
    "llama": ("LlamaConfig", _L, "norm"),
    "mistral": ("MistralConfig", {**_L, "sliding_window": None}, "norm"),
    "mixtral": ("MixtralConfig", {**_L, **_MOE, "num_local_experts": 4}, "norm"),
    "qwen2": ("Qwen2Config", _L, "norm"),
    "qwen2_moe": ("Qwen2MoeConfig", {**_L, **_MOE, "num_experts": 4, "moe_intermediate_size": 32,
                                     "shared_expert_intermediate_size": 32}, "norm"),
    "qwen3": ("Qwen3Config", {**_L, "head_dim": 8}, "norm"),
    "qwen3_moe": ("Qwen3MoeConfig", {**_L, **_MOE, "head_dim": 8, "num_experts": 4,
                                     "moe_intermediate_size": 32}, "norm"),
    "gemma": ("GemmaConfig", {**_L, "head_dim": 8}, "norm"),
    "gemma2": ("Gemma2Config", {**_L, "head_dim": 8, "sliding_window": 64}, "norm"),
    "gemma3_text": ("Gemma3TextConfig", {**_L, "head_dim": 8, "sliding_window": 64}, "norm"),
    "olmo": ("OlmoConfig", _L, "norm"),
    "olmo2": ("Olmo2Config", _L, "norm"),
    "olmoe": ("OlmoeConfig", {**_L, **_MOE, "num_experts": 4}, "norm"),
    "phi": ("PhiConfig", {**_L, "num_key_value_heads": 4}, "final_layernorm"),
    "phi3": ("Phi3Config", {**_L, "num_key_value_heads": 4}, "norm"),
    "stablelm": ("StableLmConfig", {**_L, "num_key_value_heads": 4}, "norm"),
    "cohere": ("CohereConfig", _L, "norm"),
    "granite": ("GraniteConfig", _L, "norm"),
    "starcoder2": ("Starcoder2Config", {**_L, "sliding_window": None}, "norm"),
    "persimmon": ("PersimmonConfig", {**_L, "num_key_value_heads": 4}, "final_layernorm"),
    "glm": ("GlmConfig", {**_L, "head_dim": 8}, "norm"),
    "gpt2": ("GPT2Config", dict(n_embd=D, n_layer=3, n_head=4, n_positions=128, **_TOK), "ln_f"),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=D, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, max_position_embeddings=128, **_TOK),
                 "final_layer_norm"),
    "gptj": ("GPTJConfig", dict(n_embd=D, n_layer=3, n_head=4, n_positions=128, rotary_dim=4,
                                **_TOK), "ln_f"),
    "gpt_neo": ("GPTNeoConfig", dict(hidden_size=D, num_layers=3, num_heads=4, window_size=16,
                                     attention_types=[[["global", "local"], 1], [["global"], 1]],
                                     max_position_embeddings=128, **_TOK), "ln_f"),
    "gpt_bigcode": ("GPTBigCodeConfig", dict(n_embd=D, n_layer=3, n_head=4, n_positions=128,
                                             **_TOK), "ln_f"),
    "codegen": ("CodeGenConfig", dict(n_embd=D, n_layer=3, n_head=4, n_positions=128, n_ctx=128,
                                      rotary_dim=4, **_TOK), "ln_f"),
    "bloom": ("BloomConfig", dict(hidden_size=D, n_layer=3, n_head=4, **_TOK), "ln_f"),
    "falcon": ("FalconConfig", dict(hidden_size=D, num_hidden_layers=3, num_attention_heads=4,
                                    **_TOK), "ln_f"),
    "opt": ("OPTConfig", dict(hidden_size=D, ffn_dim=64, num_hidden_layers=3, num_attention_heads=4,
                              max_position_embeddings=128, word_embed_proj_dim=D, **_TOK),
            "final_layer_norm"),
    "mpt": ("MptConfig", dict(d_model=D, n_heads=4, n_layers=3, expansion_ratio=2, max_seq_len=128,
                              **_TOK), "norm_f"),
    "xglm": ("XGLMConfig", dict(d_model=D, ffn_dim=64, num_layers=3, attention_heads=4,
                                max_position_embeddings=128, **_TOK), "layer_norm"),
    "recurrent_gemma": ("RecurrentGemmaConfig", dict(hidden_size=D, intermediate_size=64,
                                                     num_hidden_layers=3, num_attention_heads=4,
                                                     num_key_value_heads=2, lru_width=D, **_TOK),
                        "final_norm"),
    "jamba": ("JambaConfig", {**_L, "num_experts": 2, "num_experts_per_tok": 1,
                              "attn_layer_period": 2, "attn_layer_offset": 1,
                              "expert_layer_period": 2, "expert_layer_offset": 1,
                              "mamba_d_state": 4, "mamba_dt_rank": 4}, "final_layernorm"),
    # GPT-1 has no final norm: HF's last hidden_states entry IS the last block's output.
    "openai-gpt": ("OpenAIGPTConfig", dict(n_embd=D, n_layer=3, n_head=4, n_positions=128, **_TOK),
                   None),
    # Mamba's hidden_states differ BY DESIGN: no embedding entry, so hidden_states[l] is block l's
    # output (not hidden_states[l + 1]) and the last entry is norm_f(last block) (see HS_OFFSET).
    "mamba": ("MambaConfig", dict(hidden_size=D, num_hidden_layers=3, state_size=4, **_TOK),
              "norm_f"),
}

#: HF hidden_states index of block l's output = l + HS_OFFSET (1: entry 0 is the embeddings).
HS_OFFSET = {"mamba": 0}


class _Skip(torch.nn.Module):
    """Stands in for a final norm: returns its input (hook-free reference of the last block)."""

    def forward(self, x, *args, **kwargs):
        return x


@pytest.fixture(scope="module")
def shared_tokenizer():
    return tiny_tokenizer()


def _tiny_family_model(family: str):
    import transformers

    cls_name, kwargs, _ = WIDE_FAMILIES[family]
    config_cls = getattr(transformers, cls_name, None)
    if config_cls is None:
        pytest.skip(f"{cls_name} is not in transformers {transformers.__version__}")
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config_cls(**kwargs)).eval()


def _hf_rows(model, tok) -> dict[str, torch.Tensor]:
    """Unbatched HF ``hidden_states`` of every prompt: ``{position: [N, n_entries, d]}``."""
    rows: dict[str, list[torch.Tensor]] = {"last": [], "mean": []}
    for prompt in PROMPTS:
        enc = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        rows["last"].append(torch.stack([h[0, -1] for h in hs]))
        rows["mean"].append(torch.stack([h[0].mean(0) for h in hs]))
    return {k: torch.stack(v) for k, v in rows.items()}


def test_wide_family_table_has_at_least_20_families():
    assert len(WIDE_FAMILIES) >= 20


@pytest.mark.parametrize("family", sorted(WIDE_FAMILIES))
def test_any_decoder_only_family_extracts_exactly(shared_tokenizer, family):
    """Blocks found without a per-family table entry; extraction (batched, mixed lengths, last
    and mean) equals HF output_hidden_states for every block but the last, and the last block
    equals HF's hidden_states with the final norm replaced by the identity (hook-free)."""
    from probing.activations.extract import extract_activations
    from probing.model.blocks import SUPPORTED_FAMILIES, find_blocks

    tok = shared_tokenizer
    model = _tiny_family_model(family)
    assert model.config.model_type == family
    path, blocks = find_blocks(model)
    if family not in SUPPORTED_FAMILIES:  # the generic search found it
        assert path.endswith(("layers", ".h", "blocks")), path
    assert blocks is decoder_layers(model) and len(blocks) == 3
    assert len({len(tok(p)["input_ids"]) for p in PROMPTS}) > 2  # batches need padding
    acts = {pos: extract_activations(model, tok, PROMPTS, position=pos, batch_size=3,
                                     progress=False) for pos in ("last", "mean")}
    off = HS_OFFSET.get(family, 1)
    ref = _hf_rows(model, tok)
    for pos in ("last", "mean"):
        assert acts[pos].shape == (len(PROMPTS), 3, D)
        torch.testing.assert_close(acts[pos][:, :2], ref[pos][:, off : off + 2], atol=1e-5,
                                   rtol=0)
    norm_attr = WIDE_FAMILIES[family][2]
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    if norm_attr is not None:
        assert isinstance(getattr(parent, norm_attr), torch.nn.Module)
        setattr(parent, norm_attr, _Skip())
    raw = _hf_rows(model, tok)
    for pos in ("last", "mean"):
        torch.testing.assert_close(acts[pos][:, 2], raw[pos][:, -1], atol=1e-5, rtol=0)


def test_blocks_found_without_the_fast_path(monkeypatch, shared_tokenizer):
    """The generic search alone finds the same blocks the fast path names."""
    import probing.model.blocks as models

    model = _tiny_family_model("gpt2")
    fast = models.find_blocks(model)[1]
    monkeypatch.setattr(models, "SUPPORTED_FAMILIES", {})
    path, blocks = models.find_blocks(model)
    assert path == "transformer.h" and blocks is fast


def test_blocks_not_found_names_model_type_and_what_was_searched():
    class Config:
        model_type = "weird_lm"
        num_hidden_layers = 4

    class WeirdLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = Config()
            self.body = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(4)])
            self.heads = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])

    with pytest.raises(LirefError) as err:
        decoder_layers(WeirdLM())
    msg = str(err.value)
    assert "unsupported architecture 'weird_lm' (WeirdLM)" in msg
    assert "num_hidden_layers=4" in msg and "heads (2)" in msg and "<model> (WeirdLM)" in msg


class _OnDevice(torch.Tensor):
    """A CPU tensor that pretends to live on ``fake_device``: ops mixing two fake devices raise
    like CUDA does; ``.cpu()`` / ``.to("cpu")`` return a plain tensor."""

    fake_device: str

    @staticmethod
    def tag(t: torch.Tensor, device: str) -> _OnDevice:
        out = t.as_subclass(_OnDevice)
        out.fake_device = device
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [a for a in (*args, *kwargs.values()) for a in (a if isinstance(a, (list, tuple))
                                                               else [a])]
        devices = {a.fake_device for a in flat if isinstance(a, _OnDevice)}
        name = getattr(func, "__name__", "")
        to_cpu = name == "cpu" or (name == "to" and any(str(a) == "cpu"
                                                         for a in (*args[1:], *kwargs.values())))
        if len(devices) > 1:
            raise RuntimeError(f"Expected all tensors to be on the same device, found {devices}")
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor) or not devices:
            return out
        if to_cpu:  # a real copy to the host: a plain tensor (not the same object)
            return out.as_subclass(torch.Tensor).clone()
        return _OnDevice.tag(out, devices.pop())


def test_multi_device_layers_are_moved_to_cpu_per_layer(monkeypatch, tiny_llama):
    """Under a multi-device device_map block l's output lives on block l's GPU; extraction must
    pool and move each layer to the CPU before stacking. Simulated without GPUs: each layer's
    output is tagged with its own fake device, and mixing two fake devices raises."""
    import probing.activations.extract as extract

    model, tok = tiny_llama
    expected = extract.extract_activations(model, tok, PROMPTS, batch_size=2, progress=False)
    real = extract.forward_residual

    def on_devices(*args, **kwargs):
        store = real(*args, **kwargs)
        return {layer: _OnDevice.tag(h, f"cuda:{layer}") for layer, h in store.items()}

    monkeypatch.setattr(extract, "forward_residual", on_devices)
    with pytest.raises(RuntimeError, match="same device"):  # the simulation bites
        torch.stack([_OnDevice.tag(torch.ones(2), "cuda:0"), _OnDevice.tag(torch.ones(2), "cuda:1")])
    got = extract.extract_activations(model, tok, PROMPTS, batch_size=2, progress=False)
    assert type(got) is torch.Tensor
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
