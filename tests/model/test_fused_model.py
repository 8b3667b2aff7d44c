"""The whole TransformerLM on the fused backend equals the reference backend, compiled with fullgraph=True.

Needs a CUDA GPU: the fused backend refuses to build anywhere else. Both models share one state_dict and
run under bf16 autocast (the trainer's setting), so logits and every parameter gradient must agree to bf16
accuracy, and torch.compile(fullgraph=True) must trace through every Triton op without a graph break.
"""

from __future__ import annotations

import pytest
import torch
from _kernel_utils import requires_triton

pytestmark = [requires_triton, pytest.mark.gpu]

SIZES = dict(vocab_size=512, context_length=128, d_model=256, num_layers=2, num_heads=4, d_ff=688,
             rope_theta=10000.0)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-6)).item()


def _models():
    from lmfast.model import TransformerLM

    torch.manual_seed(0)
    reference = TransformerLM(**SIZES, backend="reference", device="cuda")
    fused = TransformerLM(**SIZES, backend="fused", device="cuda")
    fused.load_state_dict(reference.state_dict())
    assert fused.ops.name == "fused" and reference.ops.name == "reference"
    return reference, fused


def _loss_and_grads(model, tokens: torch.Tensor, compile_it: bool):
    run = torch.compile(model, fullgraph=True) if compile_it else model
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = run(tokens)
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens.roll(-1, dims=1).flatten())
    loss.backward()
    return logits.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("compile_it", [False, True], ids=["eager", "compiled-fullgraph"])
def test_fused_model_logits_and_gradients_match_the_reference_model(compile_it):
    reference, fused = _models()
    tokens = torch.randint(0, SIZES["vocab_size"], (4, SIZES["context_length"]), device="cuda")
    logits_ref, grads_ref = _loss_and_grads(reference, tokens, compile_it)
    logits, grads = _loss_and_grads(fused, tokens, compile_it)
    assert _relative_error(logits, logits_ref) < 2e-2
    assert grads.keys() == grads_ref.keys()
    bad = {n: _relative_error(grads[n], grads_ref[n]) for n in grads}
    assert {n: e for n, e in bad.items() if e > 5e-2} == {}
