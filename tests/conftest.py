from __future__ import annotations

import os
from pathlib import Path

import pytest

import train.configs  # noqa: F401  (registers every job schema for Hydra compose in tests)

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tiny_models import save_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """Factory: family name -> folder of a saved tiny random model (built once per session)."""
    made: dict[str, Path] = {}

    def make(family: str = "llama") -> Path:
        if family not in made:
            made[family] = save_tiny_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return made[family]

    return make


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_dir):
    """``(model, tokenizer)`` of a tiny random Llama."""
    from probing.model.loading import load_model

    return load_model(str(tiny_model_dir("llama")))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): on a
    shared 2-core box two threads are several times slower."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


#: a small but complete organism study: every stage of analysis.pipeline at reduced sizes
STUDY_OVERRIDES = (
    "data.n=240", "eval.n_resamples=200",
    "sae.training_tokens=40960", "sae.batch_size=512", "sae.eval_every=0",
    "corpus.max_texts=3000", "activations.heldout_texts=64", "activations.heldout_tokens=2000",
    "activations.ce_batches=2",
    "matching.nulls.n_random=200", "matching.nulls.n_permutations=100", "matching.top_k=5",
    "matching.injection.top_k=3", "matching.injection.n_prompts=16",
    "matching.reconstruction.max_k=16", "matching.n_resamples=200",
    "steer.n_per_set=40", "steering.strengths.add=[1.0]", "steering.strengths.add_latent=[4.0]",
    "steering.strengths.clamp_latent=[0.0]", "steering.controls.n_random_latents=1",
    "steering.controls.n_permuted=2",
    "steering.n_resamples=200",
)


@pytest.fixture(scope="session")
def organism_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m analysis.pipeline`` (all stages, wandb offline) on the committed organism at
    reduced sizes, in a fresh folder; returns that folder (the run is its newest
    ``outputs/pipeline/<time>``). Tests that run the pipeline again there write under another
    folder (``reruns/``) so that ``latest_run`` keeps naming this run, whatever the test order."""
    from tests.job_fixtures import run_module

    cwd = tmp_path_factory.mktemp("study")
    proc = run_module("analysis.pipeline", *STUDY_OVERRIDES, "logger=offline", cwd=cwd,
                      timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd
