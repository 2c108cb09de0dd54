"""liref's SAE metrics equal sae-lens's own (``sae_lens.evals``) on the same SAE and tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probing.model.blocks import decoder_layers
from probing.model.hooks import block_output
from probing.sae.metrics import ce_loss_recovered, reconstruction_metrics
from probing.sae.training import SAETrainConfig, make_training_sae

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYER = 1


class HookedAdapter:
    """The slice of TransformerLens's HookedRootModule that ``sae_lens.evals`` calls, over an HF
    model: ``blocks.{l}.hook_resid_post`` is the output of decoder block ``l``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def _run(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(input_ids=tokens, use_cache=False).logits.float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                               tokens[:, 1:].reshape(-1), reduction="none")
        return logits, loss.view(tokens.shape[0], -1)

    def __call__(self, tokens, return_type="both", loss_per_token=True, **kwargs):
        return self._run(tokens)

    def run_with_hooks(self, tokens, return_type="both", fwd_hooks=(), loss_per_token=True,
                       **kwargs):
        ((name, fn),) = fwd_hooks
        assert name == f"blocks.{LAYER}.hook_resid_post"

        def hook(_m, _i, output):
            new = fn(block_output(output), hook=None)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = decoder_layers(self.model)[LAYER].register_forward_hook(hook)
        try:
            return self._run(tokens)
        finally:
            handle.remove()


class OneBatchStore:
    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        return self.tokens[:n]


def _sae(d_in: int):
    torch.manual_seed(0)
    sae = make_training_sae(SAETrainConfig(architecture="standard", d_sae=64, k=None,
                                           decoder_init_norm=0.5), d_in)
    sae.cfg.metadata.hook_name = f"blocks.{LAYER}.hook_resid_post"
    return sae


@torch.no_grad()
def test_reconstruction_metrics_follow_sae_lens(tiny_llama):
    from sae_lens.evals import ExplainedVarianceCalculator

    model, _ = tiny_llama
    sae = _sae(32)
    x = torch.randn(300, 32) * 2 + 0.5
    ours = reconstruction_metrics(sae, x.split(64))
    feats = sae.encode(x)
    recon = sae.decode(feats)
    calc = ExplainedVarianceCalculator()
    for part in range(0, 300, 64):
        calc.add_batch(sae_output=recon[part:part + 64], hidden_acts=x[part:part + 64])
    assert ours.explained_variance == pytest.approx(calc.compute(), rel=1e-6)
    # sae-lens: "sum over dimensions, mean over tokens"; l0 = mean non-zero latents per token
    assert ours.mse == pytest.approx((x - recon).pow(2).sum(-1).mean().item(), rel=1e-5)
    assert ours.l0 == pytest.approx((feats != 0).sum(-1).float().mean().item())


@torch.no_grad()
def test_ce_loss_recovered_equals_sae_lens_ce_loss_score():
    """On the organism (a trained model: zero-ablation hurts, so the score is well conditioned;
    on a random tiny model clean and ablated losses are almost equal)."""
    from sae_lens.evals import get_downstream_reconstruction_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    from probing.model.loading import load_model

    model, tok = load_model("organism")
    sae = _sae(model.config.hidden_size)
    texts = ["what is 3 plus 4 ?\nA: 7", "what is 8 minus 2 ?\nA: 6",
             "what is 9 minus 4 ?\nA: 5", "how much is 1 plus 1 ?\nA: 2"]
    rows = [[tok.bos_token_id, *tok(f"Q: {t}")["input_ids"]] for t in texts]  # BOS, both skip
    width = max(len(r) for r in rows)
    rows = [r + tok("\nQ: what is 2 plus 2 ?")["input_ids"][: width - len(r)] for r in rows]
    tokens = torch.tensor(rows)  # equal lengths: sae-lens has no attention mask
    theirs = get_downstream_reconstruction_metrics(
        sae, HookedAdapter(model), OneBatchStore(tokens), ActivationScaler(),
        compute_kl=False, compute_ce_loss=True, n_batches=1, eval_batch_size_prompts=4,
        ignore_tokens=[tok.bos_token_id, tok.pad_token_id])
    ours = ce_loss_recovered(model, sae, LAYER, [(tokens, torch.ones_like(tokens))],
                             bos_id=tok.bos_token_id, drop_bos=True)
    assert ours.ce_loss_clean == pytest.approx(theirs["ce_loss_without_sae"], rel=1e-5)
    assert ours.ce_loss_sae == pytest.approx(theirs["ce_loss_with_sae"], rel=1e-5)
    assert ours.ce_loss_zero == pytest.approx(theirs["ce_loss_with_ablation"], rel=1e-5)
    assert ours.ce_loss_recovered == pytest.approx(theirs["ce_loss_score"], rel=1e-4)
    n = tokens.shape[1]
    assert ours.n_ce_tokens == 4 * (n - 2)  # n - 1 predictions per row, minus the one from BOS
    assert ours.ce_loss_recovered_answer_tokens is None  # only with last_n
