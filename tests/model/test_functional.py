"""lmfast.functional against independent oracles: torch's own ops, float64 formulas, complex arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _kernel_utils import assert_verbose_allclose

from lmfast import functional


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------- softmax, silu


@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_matches_torch_softmax_along_any_dim(dim):
    x = torch.randn(4, 7, 9)
    assert_verbose_allclose(functional.softmax(x, dim=dim), torch.softmax(x, dim=dim), 1e-6, 1e-5, "softmax")


def test_softmax_is_stable_for_huge_inputs():
    x = torch.tensor([[1000.0, 1001.0, 1002.0], [-1e4, 0.0, 1e4], [3e38, 3e38, -3e38]])
    out = functional.softmax(x, dim=-1)
    assert torch.isfinite(out).all()
    assert_verbose_allclose(out, torch.softmax(x.double(), dim=-1), 1e-6, 1e-5, "softmax of huge inputs")
    assert_verbose_allclose(functional.softmax(x[:1] - 1000.0, dim=-1), out[:1], 1e-6, 1e-6, "shift invariance")


def test_silu_matches_torch_silu_and_its_gradient():
    x = torch.linspace(-20, 20, 1001, dtype=torch.float64, requires_grad=True)
    ours = functional.silu(x)
    ours.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    F.silu(x).sum().backward()
    assert_verbose_allclose(ours, F.silu(x), 1e-12, 1e-12, "silu")
    assert_verbose_allclose(grad, x.grad, 1e-12, 1e-12, "silu grad")


# ---------------------------------------------------------------------------------------------- cross-entropy


def _ce_and_grad(fn, logits, targets):
    logits = logits.detach().clone().requires_grad_(True)
    loss = fn(logits, targets)
    loss.backward()
    return loss.detach(), logits.grad


def test_cross_entropy_matches_torch_on_2d_logits_value_and_gradient():
    logits, targets = torch.randn(37, 101), torch.randint(0, 101, (37,))
    loss, grad = _ce_and_grad(functional.cross_entropy, logits, targets)
    ref_loss, ref_grad = _ce_and_grad(F.cross_entropy, logits.double(), targets)
    assert_verbose_allclose(loss, ref_loss, 1e-6, 1e-6, "loss")
    assert_verbose_allclose(grad, ref_grad, 1e-7, 1e-5, "grad")


def test_cross_entropy_flattens_3d_logits_like_torch():
    logits, targets = torch.randn(3, 5, 11), torch.randint(0, 11, (3, 5))
    loss, grad = _ce_and_grad(functional.cross_entropy, logits, targets)
    flat = lambda lg, t: F.cross_entropy(lg.reshape(-1, 11), t.reshape(-1))  # noqa: E731
    ref_loss, ref_grad = _ce_and_grad(flat, logits.double(), targets)
    assert_verbose_allclose(loss, ref_loss, 1e-6, 1e-6, "loss")
    assert_verbose_allclose(grad, ref_grad, 1e-7, 1e-5, "grad")


def test_cross_entropy_is_stable_for_huge_logits():
    logits = torch.randn(8, 50) * 1e4
    logits[0, 3] = 1e30
    targets = torch.randint(0, 50, (8,))
    loss, grad = _ce_and_grad(functional.cross_entropy, logits, targets)
    ref_loss, ref_grad = _ce_and_grad(F.cross_entropy, logits.double(), targets)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert_verbose_allclose(loss, ref_loss, 0.0, 1e-6, "loss")
    assert_verbose_allclose(grad, ref_grad, 1e-7, 1e-5, "grad")


def test_cross_entropy_of_bfloat16_logits_is_computed_in_float32():
    logits, targets = torch.randn(16, 64).bfloat16(), torch.randint(0, 64, (16,))
    loss = functional.cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    assert_verbose_allclose(loss, F.cross_entropy(logits.double(), targets), 1e-6, 1e-6, "loss")


def test_cross_entropy_gradient_passes_gradcheck_in_float64():
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 6, (4,))
    assert torch.autograd.gradcheck(lambda lg: functional.cross_entropy(lg, targets), (logits,))


# ---------------------------------------------------------------------------------------------- RMSNorm


def test_rmsnorm_matches_float64_formula():
    x, w = torch.randn(3, 5, 48) * 3, torch.randn(48)
    x64, w64 = x.double(), w.double()
    ref = x64 / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + 1e-5) * w64
    assert_verbose_allclose(functional.rmsnorm(x, w, 1e-5), ref, 1e-5, 1e-5, "rmsnorm")


@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_rmsnorm_adds_eps_inside_the_square_root_on_small_inputs(eps):
    # At |x| ~ 1e-3, mean(x^2) ~ 1e-6 is comparable to eps, so eps inside the root (the spec: Llama, CS336) and
    # eps added to the root differ by up to ~3x; on randn * 3 they agree to 1e-6 and no test could tell.
    x, w = torch.randn(4, 7, 64) * 1e-3, torch.rand(64) + 0.5
    x64, w64 = x.double(), w.double()
    ms = (x64 * x64).mean(-1, keepdim=True)
    ref = x64 / torch.sqrt(ms + eps) * w64
    outside = x64 / (torch.sqrt(ms) + eps) * w64
    assert (ref - outside).abs().max() > 100 * 1e-5 * ref.abs().max()  # the two conventions are far apart here
    assert_verbose_allclose(functional.rmsnorm(x, w, eps), ref, 1e-5 * ref.abs().max().item(), 1e-5, "rmsnorm")


def test_rmsnorm_keeps_bfloat16_dtype_and_computes_in_float32():
    x, w = torch.randn(4, 64).bfloat16(), torch.ones(64).bfloat16()
    out = functional.rmsnorm(x, w)
    x64 = x.double()
    ref = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5)
    assert out.dtype == torch.bfloat16
    assert_verbose_allclose(out, ref, 1e-2, 1e-2, "rmsnorm bf16")


def test_rmsnorm_gradients_pass_gradcheck_in_float64():
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: functional.rmsnorm(a, b, 1e-5), (x, w))


# ---------------------------------------------------------------------------------------------- RoPE


def _rope_complex_oracle(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Adjacent pairs as complex numbers x[2i] + i x[2i+1], multiplied by e^{i pos theta^(-2i/d)}, in float64."""
    d = x.shape[-1]
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    freqs = torch.tensor([theta ** (-2.0 * i / d) for i in range(d // 2)], dtype=torch.float64)
    angles = positions.double().unsqueeze(-1) * freqs
    return torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).reshape(x.shape)


def test_rope_cos_sin_tables_match_the_frequency_formula():
    cos, sin = functional.rope_cos_sin(500.0, 6, torch.tensor([0, 3, 17]))
    for row, pos in enumerate((0, 3, 17)):
        for i in range(3):
            angle = pos * 500.0 ** (-2 * i / 6)
            assert cos[row, i].item() == pytest.approx(math.cos(angle), abs=1e-7)
            assert sin[row, i].item() == pytest.approx(math.sin(angle), abs=1e-7)
    assert cos.dtype == sin.dtype == torch.float32


def test_apply_rope_matches_complex_rotation_in_float64():
    x = torch.randn(2, 3, 11, 16)
    positions = torch.arange(11)
    cos, sin = functional.rope_cos_sin(10000.0, 16, positions)
    assert_verbose_allclose(functional.apply_rope(x, cos, sin), _rope_complex_oracle(x, positions, 10000.0),
                            1e-5, 1e-5, "apply_rope")


def test_apply_rope_with_arbitrary_positions_matches_complex_rotation():
    x = torch.randn(4, 7, 8)
    positions = torch.randint(0, 5000, (4, 7))
    cos, sin = functional.rope_cos_sin(10000.0, 8, positions)
    assert_verbose_allclose(functional.apply_rope(x, cos, sin), _rope_complex_oracle(x, positions, 10000.0),
                            1e-4, 1e-5, "apply_rope at random positions")


def test_apply_rope_keeps_dtype_and_preserves_pair_norms():
    x = torch.randn(5, 12, dtype=torch.float64)
    cos, sin = functional.rope_cos_sin(10000.0, 12, torch.arange(5))
    out = functional.apply_rope(x, cos, sin)
    assert out.dtype == torch.float64
    norms = lambda t: t.reshape(5, 6, 2).norm(dim=-1)  # noqa: E731
    assert_verbose_allclose(norms(out), norms(x), 1e-6, 1e-6, "pair norms")


def test_rope_inner_product_depends_only_on_relative_position():
    d, theta = 16, 10000.0
    q, k = torch.randn(d), torch.randn(d)

    def score(m: int, n: int) -> float:
        cos, sin = functional.rope_cos_sin(theta, d, torch.tensor([m, n]))
        q_m = functional.apply_rope(q[None], cos[:1], sin[:1])
        k_n = functional.apply_rope(k[None], cos[1:], sin[1:])
        return (q_m * k_n).sum().item()

    for offset in (0, 1, 5, 40):
        ref = score(offset, 0)
        for shift in (1, 7, 100, 1000):
            assert score(offset + shift, shift) == pytest.approx(ref, abs=1e-3)
    assert score(5, 0) != pytest.approx(score(0, 0), abs=1e-3)


def test_rope_applies_the_same_rotation_to_queries_and_keys_and_broadcasts_batched_tables():
    q, k = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    positions = torch.stack((torch.arange(6), torch.arange(10, 16)))
    cos, sin = functional.rope_cos_sin(10000.0, 8, positions)
    q_rot, k_rot = functional.rope(q, k, cos, sin)
    ref_q = _rope_complex_oracle(q, positions[:, None, :], 10000.0)
    ref_k = _rope_complex_oracle(k, positions[:, None, :], 10000.0)
    assert_verbose_allclose(q_rot, ref_q, 1e-5, 1e-5, "q")
    assert_verbose_allclose(k_rot, ref_k, 1e-5, 1e-5, "k")


def test_apply_rope_gradient_passes_gradcheck_in_float64():
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    cos, sin = functional.rope_cos_sin(10000.0, 8, torch.arange(5))
    assert torch.autograd.gradcheck(lambda t: functional.apply_rope(t, cos.double(), sin.double()), (x,))


def test_rope_cos_sin_rejects_an_odd_head_dim():
    with pytest.raises(ValueError, match="even head dim"):
        functional.rope_cos_sin(10000.0, 7, torch.arange(3))


# ---------------------------------------------------------------------------------------------- attention


def test_scaled_dot_product_attention_matches_float64_formula():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    scores = q.double() @ k.double().transpose(-2, -1) / math.sqrt(8)
    ref = torch.softmax(scores, dim=-1) @ v.double()
    assert_verbose_allclose(functional.scaled_dot_product_attention(q, k, v), ref, 1e-5, 1e-5, "attention")


def test_attention_mask_true_means_attend():
    q, k, v = torch.randn(1, 4, 8), torch.randn(1, 6, 8), torch.randn(1, 6, 3)
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[..., 2] = True  # every query may look only at key 2
    out = functional.scaled_dot_product_attention(q, k, v, mask)
    assert_verbose_allclose(out, v[:, 2:3].expand(1, 4, 3), 1e-6, 1e-6, "attend to key 2 only")
    mask = torch.rand(1, 4, 6) > 0.5
    mask[..., 0] = True
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # torch's convention: True = take part
    assert_verbose_allclose(functional.scaled_dot_product_attention(q, k, v, mask), ref, 1e-6, 1e-5, "random mask")


def test_causal_attention_equals_written_out_attention_with_tril_mask_and_torch_sdpa():
    q, k, v = (torch.randn(2, 4, 9, 16, requires_grad=True) for _ in range(3))
    mask = torch.ones(9, 9, dtype=torch.bool).tril()
    outs = [functional.causal_attention(q, k, v), functional.scaled_dot_product_attention(q, k, v, mask),
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)]
    grads = [torch.autograd.grad(o, (q, k, v), torch.ones_like(o)) for o in outs]
    for out, grad, name in zip(outs[1:], grads[1:], ("written-out with tril mask", "torch sdpa"), strict=True):
        assert_verbose_allclose(outs[0], out, 1e-5, 1e-5, f"causal vs {name}")
        for g0, g1, wrt in zip(grads[0], grad, "qkv", strict=True):
            assert_verbose_allclose(g0, g1, 1e-5, 1e-4, f"d{wrt}: causal vs {name}")


def test_causal_attention_honours_an_explicit_scale():
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    ref = functional.scaled_dot_product_attention(q * 0.3 * math.sqrt(8), k, v, mask)
    assert_verbose_allclose(functional.causal_attention(q, k, v, scale=0.3), ref, 1e-5, 1e-5, "scale=0.3")


# ------------------------------------------------------------------------- grouped-query heads, document masks


def _repeat_kv(t: torch.Tensor, groups: int) -> torch.Tensor:
    """transformers' repeat_kv: kv head j serves query heads j*groups .. j*groups + groups - 1."""
    b, h, s, d = t.shape
    return t[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


@pytest.mark.parametrize("q_heads, kv_heads", [(8, 2), (6, 2), (4, 1), (4, 4)])
def test_causal_attention_with_grouped_kv_heads_equals_repeated_kv_written_out(q_heads, kv_heads):
    q = torch.randn(2, q_heads, 11, 16, requires_grad=True)
    k, v = (torch.randn(2, kv_heads, 11, 16, requires_grad=True) for _ in range(2))
    mask = torch.ones(11, 11, dtype=torch.bool).tril()
    groups = q_heads // kv_heads
    ours = functional.causal_attention(q, k, v)
    ref = functional.scaled_dot_product_attention(q, _repeat_kv(k, groups), _repeat_kv(v, groups), mask)
    assert ours.shape == (2, q_heads, 11, 16)
    assert_verbose_allclose(ours, ref, 1e-5, 1e-5, "GQA forward")
    g = torch.randn_like(ours)
    for a, b, wrt in zip(torch.autograd.grad(ours, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g), "qkv",
                         strict=True):
        assert_verbose_allclose(a, b, 1e-5, 1e-4, f"GQA d{wrt}")


def test_causal_attention_refuses_query_heads_not_divisible_by_kv_heads():
    q, kv = torch.randn(1, 6, 4, 8), torch.randn(1, 4, 4, 8)
    with pytest.raises(ValueError, match="divisible by kv_heads"):
        functional.causal_attention(q, kv, kv)


def test_document_ids_start_a_new_document_after_each_end_of_text_token():
    tokens = torch.tensor([[5, 7, 0, 9, 0, 0, 3], [0, 1, 2, 3, 4, 5, 0]])
    ids = functional.document_ids(tokens, eot_id=0)
    assert ids.dtype == torch.int32
    assert ids.tolist() == [[0, 0, 0, 1, 1, 2, 3], [0, 1, 1, 1, 1, 1, 1]]
    assert functional.document_positions(ids).tolist() == [[0, 1, 2, 0, 1, 0, 0], [0, 0, 1, 2, 3, 4, 5]]
    assert functional.document_positions(ids).dtype == torch.int64


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_document_masked_attention_equals_attending_each_document_alone(kv_heads):
    lengths = [[3, 5, 1, 4], [13]]  # documents of each row; the second row is one document
    q = torch.randn(2, 4, 13, 8, requires_grad=True)
    k, v = (torch.randn(2, kv_heads, 13, 8, requires_grad=True) for _ in range(2))
    doc_ids = torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in lengths])
    ours = functional.causal_attention(q, k, v, doc_ids=doc_ids)
    pieces = []
    for b, row in enumerate(lengths):
        start, outs = 0, []
        for n in row:
            part = slice(start, start + n)
            outs.append(functional.causal_attention(q[b:b + 1, :, part], k[b:b + 1, :, part], v[b:b + 1, :, part]))
            start += n
        pieces.append(torch.cat(outs, dim=2))
    alone = torch.cat(pieces)
    assert_verbose_allclose(ours, alone, 1e-5, 1e-5, "masked vs each document alone")
    g = torch.randn_like(ours)
    for a, b, wrt in zip(torch.autograd.grad(ours, (q, k, v), g), torch.autograd.grad(alone, (q, k, v), g), "qkv",
                         strict=True):
        assert_verbose_allclose(a, b, 1e-5, 1e-4, f"d{wrt}: masked vs alone")


def test_document_masked_attention_of_one_document_equals_plain_causal_attention():
    q, k, v = (torch.randn(2, 2, 9, 8) for _ in range(3))
    doc_ids = torch.zeros(2, 9, dtype=torch.int64)
    assert_verbose_allclose(functional.causal_attention(q, k, v, doc_ids=doc_ids), functional.causal_attention(q, k, v),
                            1e-6, 1e-5, "one document")


def test_llama3_rope_scaling_matches_transformers_inverse_frequencies():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    cfg = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2, max_position_embeddings=512,
                                   rope_scaling=scaling, rope_theta=500000.0)
    theirs, attention_scaling = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    ours = functional.rope_inv_freq(500000.0, 128, scaling)
    assert attention_scaling == 1.0
    assert not torch.equal(ours, functional.rope_inv_freq(500000.0, 128))  # the scaling changes some of them
    assert_verbose_allclose(ours.float(), theirs.float(), 0.0, 1e-6, "llama3 inverse frequencies")


def test_rope_scaling_of_an_unknown_type_is_refused():
    with pytest.raises(ValueError, match="yarn"):
        functional.rope_inv_freq(10000.0, 8, {"rope_type": "yarn", "factor": 2.0})
