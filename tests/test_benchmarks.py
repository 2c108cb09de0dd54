"""Smoke tests of the benchmark scripts at tiny sizes (``--quick``): each main path runs and
writes a result JSON with the expected keys and finite positive numbers. No timing assertions:
speed goals are measured by ``make bench`` as ratios within one run, never by tests."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from probing.errors import LirefError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEYS = {"benchmark", "machine", "settings", "times_s", "median_s", "spread", "ratios", "goals",
        "note"}


def _finite_positive(values: Any) -> bool:
    flat = values if isinstance(values, list) else [values]
    return bool(flat) and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                              for v in flat)


def check_result(path: Path, name: str) -> dict[str, Any]:
    """The common result schema: keys, machine, positive finite times, medians and ratios,
    and a boolean pass for every goal."""
    result = json.loads(path.read_text())
    assert KEYS <= set(result), KEYS - set(result)
    assert result["benchmark"] == name
    assert {"platform", "cpu_count", "torch_threads"} <= set(result["machine"])
    assert result["machine"]["torch_threads"] == 1
    assert result["times_s"] and all(_finite_positive(v) for v in result["times_s"].values())
    assert set(result["median_s"]) == set(result["times_s"])
    for method, med in result["median_s"].items():
        lo, hi = result["spread"][method]["min"], result["spread"][method]["max"]
        assert _finite_positive(med) and lo <= med <= hi
    assert result["ratios"] and all(_finite_positive(v) for v in result["ratios"].values())
    assert result["goals"]
    for goal in result["goals"].values():
        assert _finite_positive(goal["value"]) and isinstance(goal["pass"], bool)
        assert goal["goal"].split()[0] in ("<=", ">=")
    return result


@pytest.mark.slow
def test_extraction_speed_quick(tmp_path):
    from benchmarks import extraction_speed

    out = tmp_path / "extraction_speed.json"
    extraction_speed.main(["--quick", "--repeats", "1", "--out", str(out)])
    result = check_result(out, "extraction_speed")
    med = result["median_s"]
    for method in ("hf_bare_forward", "hf_output_hidden_states", "hf_blocks_only",
                   "liref_cached_all_layers", "liref_half_depth"):
        assert method in med
    assert set(result["goals"]) >= {"liref_all_layers_cached / bare_forward",
                                    "liref_half_depth / bare_forward"}
    for optional in ("transformer_lens", "nnsight"):
        installed = importlib.util.find_spec(optional) is not None
        key = "transformerlens_run_with_cache" if optional == "transformer_lens" else "nnsight_trace"
        assert (key in med) == installed
    # every route returns the same residual activations (same weights, same tokens)
    checks = result["checks"]
    assert checks["liref_vs_hf_hidden_states_layers_0_to_L-2"] < 1e-4
    assert checks["liref_half_depth_vs_liref_all_layers"] < 1e-4
    assert all(v < 1e-4 for v in checks.values()), checks


def test_extraction_speed_skips_a_baseline(tmp_path):
    from benchmarks import extraction_speed

    out = tmp_path / "r.json"
    extraction_speed.main(["--quick", "--repeats", "1", "--n", "4", "--skip", "transformerlens",
                           "nnsight", "--out", str(out)])
    result = check_result(out, "extraction_speed")
    assert "transformerlens_run_with_cache" not in result["times_s"]
    assert result["methods"]["nnsight"].startswith("skipped")


@pytest.mark.slow
def test_extraction_memory_quick(tmp_path):
    from benchmarks import extraction_memory

    out = tmp_path / "extraction_memory.json"
    extraction_memory.main(["--quick", "--n", "2", "--factor", "3", "--parallel", "--out",
                            str(out)])
    result = check_result(out, "extraction_memory")
    small, large = result["runs"]["small"], result["runs"]["large"]
    assert (small["n"], large["n"]) == (2, 6)
    assert large["result_shape"][0] == 6 and large["result_bytes"] == 3 * small["result_bytes"]
    assert small["peak_rss_kib"] >= small["rss_after_load_kib"] > 0


@pytest.mark.slow
def test_sae_throughput_quick(tmp_path):
    from benchmarks import sae_throughput

    out = tmp_path / "sae_throughput.json"
    sae_throughput.main(["--quick", "--runs", "1", "--tokens", "1024", "--out", str(out)])
    result = check_result(out, "sae_throughput")
    assert set(result["ratios"]) == {"warm_vs_sae_lens", "cold_vs_sae_lens",
                                     "sweep_of_4_speedup"}
    assert result["settings"]["training_tokens"] == 1024
    assert all(_finite_positive(v) for v in result["tokens_per_s_median"].values())
    assert len(result["per_run_warm_ratio"]) == 1


def test_run_all_finds_benchmarks():
    from benchmarks import run_all

    present, missing = run_all.available(["extraction_speed", "no_such_benchmark"])
    assert present == ["extraction_speed"] and missing == ["no_such_benchmark"]
    present, _ = run_all.available()
    assert {"extraction_speed", "extraction_memory", "sae_throughput"} <= set(present)
    assert ("steering_overhead" in present) == (run_all.HERE / "steering_overhead.py").is_file()


def test_steering_overhead_quick(tmp_path):
    from benchmarks import steering_overhead

    out = tmp_path / "steering_overhead.json"
    steering_overhead.main(["--quick", "--out", str(out)])
    result = check_result(out, "steering_overhead")
    assert {"generate_plain", "generate_steered_all", "sweep_teacher_forced_batched",
            "sweep_generate_one_by_one"} <= set(result["times_s"])
    assert result["batched_equals_one_by_one"] == {"teacher_forced": True, "generate": True}
    assert "steered generate / plain generate (all positions)" in result["goals"]


def test_steering_overhead_flags_through_the_common_parser():
    from benchmarks import steering_overhead

    plain = steering_overhead.parse_args([])
    assert (plain.n, plain.sweep_n, plain.new_tokens, plain.repeats) == (256, 128, 16, 5)
    assert (plain.threads, plain.quick, plain.out) == (1, False, None)
    quick = steering_overhead.parse_args(["--quick", "--n", "5", "--out", "r.json"])
    assert (quick.n, quick.sweep_n, quick.new_tokens, quick.repeats) == (5, 16, 4, 1)
    assert quick.out == "r.json"


def test_sae_throughput_random_model_is_an_untrained_organism(tmp_path):
    """``--model random``: the organism's shape and tokenizer, random weights, from the
    library (no test helper)."""
    from benchmarks import sae_throughput
    from probing.model.blocks import num_layers
    from probing.model.loading import load_model
    from probing.organism.config import OrganismConfig

    path, label = sae_throughput._model_path("random", tmp_path)
    assert label.startswith("random")
    model, tok = load_model(path)
    shape = OrganismConfig().model
    assert num_layers(model) == shape.n_layers
    assert model.config.hidden_size == shape.hidden_size
    assert len(tok) == model.config.vocab_size  # the organism's own word-level tokenizer


def test_benchmarks_do_not_import_the_tests():
    from benchmarks import run_all

    for file in sorted(run_all.HERE.glob("*.py")):
        text = file.read_text()
        assert "from tests" not in text and "import tests" not in text, file.name


def test_organism_matched_folds_are_the_librarys_grouped_folds():
    import numpy as np

    from benchmarks import organism_matched
    from probing.probes.evaluation import grouped_folds

    qs = organism_matched.questions("organism_matched")
    folds = organism_matched.folds(qs, seed=1)
    groups = np.array([q.group for q in qs])
    expected = grouped_folds([q.target for q in qs], groups, organism_matched.K_FOLDS, seed=1)
    assert len(folds) == organism_matched.K_FOLDS
    for (tr, te), (tr2, te2) in zip(folds, expected, strict=True):
        assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
        assert not set(groups[tr]) & set(groups[te])  # no group on both sides
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(len(qs)))


@pytest.mark.slow
def test_real_model_throughput_quick(tmp_path):
    """``--quick``: the tiny random Llama through both parts (no wheels, no data); a name that
    is not a built-in model is skipped with a note, not an error."""
    from benchmarks import real_model_throughput as bench

    out = tmp_path / "real_model_throughput.json"
    bench.main(["--quick", "--repeats", "1", "--models", "no-such-model", bench.TINY,
                "--out", str(out)])
    result = check_result(out, "real_model_throughput")
    assert set(result["times_s"]) == {f"{bench.TINY}/{m}" for m in (
        "liref_stream", "bare_blocks", "full_forward", "sae_from_cache", "sae_in_memory")}
    assert result["skipped"]["no-such-model"].startswith("skipped: 'no-such-model' is not a "
                                                         "built-in model name")
    section = result["models"][bench.TINY]
    s = section["settings"]
    assert (s["n_blocks"], s["block"]) == (4, 2)  # round(0.6 * 4): no committed SAE
    assert s["stream_tokens"] >= bench.QUICK["tokens"]
    assert s["sae"]["steps"] == 3 and s["sae"]["training_tokens"] == 3 * 256
    assert s["sae"]["cache_tokens"] == s["stream_tokens"]  # the cache holds the same stream
    assert all(_finite_positive(v) for v in section["tokens_per_s_median"].values())
    assert set(result["goals"]) == {f"{bench.TINY}: liref stream / bare blocks 0..2",
                                    f"{bench.TINY}: SAE tokens/s from cache / in memory"}
    # the stream is HF's hidden_states[block + 1] at the kept positions
    assert section["checks"]["max_abs_diff_liref_stream_vs_hf_hidden_states_first_batch"] < 1e-4


def test_real_model_throughput_truncation_is_restored():
    """The bare baseline runs blocks 0..b of the same model and gives the blocks back after."""
    from benchmarks import real_model_throughput as bench
    from probing.model.blocks import decoder_layers

    model, _tok, _texts = bench.tiny_llama()
    blocks = decoder_layers(model)
    ids = torch.randint(3, 1000, (2, 5))
    with bench.truncated(model, 2) as stack:
        assert len(decoder_layers(model)) == 2
        out = stack(input_ids=ids, use_cache=False, output_hidden_states=True)
    assert decoder_layers(model) is blocks and len(blocks) == 4
    full = model(input_ids=ids, use_cache=False, output_hidden_states=True).hidden_states
    assert torch.allclose(out.hidden_states[1], full[1], atol=1e-5)  # block 0's output


def test_real_model_throughput_block_and_sae_settings(monkeypatch, tmp_path):
    from benchmarks import real_model_throughput as bench

    monkeypatch.setattr(bench, "committed_sae", lambda name: None)
    assert bench.choose_block("x", 30, None)[0] == 18
    assert bench.choose_block("x", 30, 7) == (7, "--block")
    with pytest.raises(LirefError, match="--block 30 is out of range"):
        bench.choose_block("x", 30, 30)
    monkeypatch.setattr(bench, "committed_sae", lambda name: {"layer": 11, "path": "p"})
    assert bench.choose_block("x", 30, 7)[0] == 11  # the committed SAE's block wins
    cfg, source = bench.sae_config("no_such_family-1m", 5, None)
    assert source.startswith("defaults")
    assert (cfg.architecture, cfg.expansion_factor, cfg.k, cfg.batch_size) == ("topk", 4, 64, 4096)
    assert cfg.total_steps == 5 and cfg.eval_every == 0
    (tmp_path / "sae_fam.yaml").write_text(
        "sae:\n  architecture: topk\n  expansion_factor: 4\n  k: 32\n  batch_size: 2048\n"
        "  lr_scheduler: cosineannealing\n  lr_warm_up_steps: 100\n  eval_every: 100\n"
        "activations:\n  max_tokens: 1000\n")
    cfg, source = bench.sae_config("fam-1m", 6, None, conf_dir=tmp_path)
    assert source.endswith("sae_fam.yaml")
    assert (cfg.k, cfg.batch_size, cfg.training_tokens) == (32, 2048, 6 * 2048)
    assert (cfg.lr_scheduler, cfg.lr_warm_up_steps, cfg.eval_every) == ("cosineannealing", 3, 0)


def test_real_model_throughput_skips_without_data(tmp_path):
    from benchmarks import real_model_throughput as bench

    out = tmp_path / "r.json"
    result = bench.main(["--models", "smollm2-135m", "--data", str(tmp_path / "none"),
                         "--out", str(out)])
    assert "local benchmark data are absent" in result["skipped"]["smollm2-135m"]
    assert result["models"] == {} and result["times_s"] == {}


def test_memory_batches_cover_the_data():
    from benchmarks.real_model_throughput import memory_batches

    acts = torch.arange(10.0).reshape(5, 2)
    gen = memory_batches(acts, 4)
    first = next(gen)
    assert first.shape == (4, 2)
    small = next(memory_batches(acts[:2], 4))  # fewer rows than a batch: repeated
    assert small.shape == (4, 2) and set(small[:, 0].tolist()) <= {0.0, 2.0}
