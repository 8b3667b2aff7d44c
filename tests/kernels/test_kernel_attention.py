"""The fused causal attention kernel (lmfast.kernels.attention) against the plain-PyTorch references and an
independent oracle: grouped heads (GQA ratios 1-8, MQA), document masks, RoPE inside attention.

Without a GPU the kernels run on CPU tensors through Triton's interpreter at small shapes (the interpreter picks
small blocks so these still cover several blocks, the unmarked off-diagonal stage and a ragged tail). The kernel
refuses fp32 on CUDA (tl.dot would round it to tf32), so every unmarked test takes its dtype from the ``dtype``
fixture: on a GPU fp16, and under the interpreter both fp32 (exact tolerances) and fp16 with CUDA's dtype rule
forced, which is how these tests run on a GPU. bf16 runs on a GPU only: the interpreter's bf16 ``tl.dot`` is
wrong (triton issue 11584). The gpu-marked tests run bf16 at real sizes and under torch.compile.
"""

from __future__ import annotations

import math

import pytest
import torch
from _kernel_utils import (
    HAS_TRITON,
    TOLERANCES,
    assert_verbose_allclose,
    force_cuda_attention_dtypes,
    kernel_device,
    requires_triton,
)

from lmfast.model import functional

if HAS_TRITON:
    from lmfast.kernels import _attention_configs as configs
    from lmfast.kernels import attention as attn_mod

pytestmark = requires_triton

# The half-precision kernel rounds P to fp16 for the tensor-core P.V product, as on a GPU: ~1e-3 of the output.
ATTENTION_TOLERANCES = {**TOLERANCES, torch.float16: (4e-3, 4e-3)}
DTYPES = [torch.float16] if torch.cuda.is_available() else [torch.float32, torch.float16]
EXACT = DTYPES[0]  # the most exact dtype the kernel takes where the tests run: fp32 under the interpreter


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request, monkeypatch):
    """The dtype a test runs in; under the interpreter fp16 runs with CUDA's dtype rule (fp16/bf16 only)."""
    if request.param != torch.float32 and kernel_device() == "cpu":
        force_cuda_attention_dtypes(monkeypatch)
    return request.param


def _qkv(shape, dtype, device=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    device = device or kernel_device()
    return [torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_() for _ in range(3)]


def _forward_backward(fn, q, k, v, grad, **kwargs):
    out = fn(q, k, v, **kwargs)
    return (out, *torch.autograd.grad(out, (q, k, v), grad))


def _exact(fn, q, k, v, grad, **kwargs):
    """``fn``'s output and gradients in fp32 from the same (possibly half-precision) inputs."""
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    return _forward_backward(fn, q32, k32, v32, grad.float(), **kwargs)


def _assert_matches(fn, expected_fn, shape, dtype, seed=0, **kwargs):
    q, k, v = _qkv(shape, dtype, seed=seed)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(q)
    actual = _forward_backward(fn, q, k, v, grad, **kwargs)
    expected = _exact(expected_fn, q, k, v, grad, **kwargs)
    atol, rtol = ATTENTION_TOLERANCES[dtype]
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert a.dtype == dtype
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)


def _oracle(q, k, v, scale=None, *, doc_ids=None, cos=None, sin=None):
    """Independent of causal_attention: RoPE written out pairwise, K/V repeated per query head
    (``repeat_interleave``), an explicit boolean causal-and-same-document mask, and
    ``functional.scaled_dot_product_attention`` (whose 1/sqrt(d) the scale is folded against)."""
    if cos is not None:
        c, s = (t.unsqueeze(1) if t.dim() == 3 else t for t in (cos, sin))

        def rotate(x):
            x0, x1 = x[..., 0::2], x[..., 1::2]
            return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)

        q, k = rotate(q.float()).to(q.dtype), rotate(k.float()).to(k.dtype)
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    seq, head_dim = q.shape[-2:]
    mask = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    if doc_ids is not None:
        mask = mask & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
    if scale is not None:
        q = q * (scale * math.sqrt(head_dim))
    return functional.scaled_dot_product_attention(q, k, v, mask)


def _doc_positions(doc_ids):
    """Positions restarting at 0 in each document (functional.document_positions, written out here)."""
    seq = doc_ids.shape[-1]
    idx = torch.arange(seq).expand_as(doc_ids)
    starts = torch.where(torch.cat([torch.ones_like(doc_ids[:, :1], dtype=torch.bool),
                                    doc_ids[:, 1:] != doc_ids[:, :-1]], 1), idx, 0).cummax(1).values
    return idx - starts


def _docs(*lengths_per_row, first_id=0):
    """int32 doc ids (batch, seq) from each row's document lengths."""
    rows = [torch.cat([torch.full((n,), first_id + i, dtype=torch.int32) for i, n in enumerate(lengths)])
            for lengths in lengths_per_row]
    return torch.stack(rows).to(kernel_device())


def _assert_matches_oracle(shape_q, kv_heads, dtype, *, doc_ids=None, rope=False, seed=0, scale=None):
    """The kernel (attention or rope_attention) against the oracle, output and every input gradient."""
    b, hq, t, d = shape_q
    gen = torch.Generator().manual_seed(seed)
    make = lambda heads: torch.randn(b, heads, t, d, generator=gen).to(kernel_device(), dtype).requires_grad_()
    q, k, v = make(hq), make(kv_heads), make(kv_heads)
    grad = torch.randn(shape_q, generator=gen).to(q)
    cos = sin = None
    if rope:
        positions = _doc_positions(doc_ids.cpu()) if doc_ids is not None else torch.arange(t)
        cos, sin = (x.to(kernel_device()) for x in functional.rope_cos_sin(10000.0, d, positions))
        fn = lambda q, k, v: attn_mod.rope_attention(q, k, v, cos, sin, scale, doc_ids=doc_ids)
    else:
        fn = lambda q, k, v: attn_mod.attention(q, k, v, scale, doc_ids=doc_ids)
    actual = _forward_backward(fn, q, k, v, grad)
    expected = _exact(lambda q, k, v: _oracle(q, k, v, scale, doc_ids=doc_ids, cos=cos, sin=sin), q, k, v, grad)
    atol, rtol = ATTENTION_TOLERANCES[dtype]
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert a.dtype == dtype and a.shape == e.shape
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)


def _written_out_causal(q, k, v, scale=None):
    """softmax(scale Q K^T masked to j <= i) V, written out (CPU SDPA returns NaN for a scale <= 0)."""
    seq = q.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    mask = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-2, -1) * scale).masked_fill(~mask, float("-inf"))
    return functional.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("shape", [
    (2, 3, 67, 32),  # ragged tail: 67 = 2 full 32-row blocks + 3
    (2, 3, 67, 64),
    (1, 2, 64, 128),  # whole blocks only
    (1, 5, 123, 32),  # the odd shape of the style guide
    (2, 1, 1, 64),  # one token: the diagonal block holds a single score
    (1, 2, 13, 32),  # shorter than one block
])
def test_attention_forward_and_gradients_match_causal_attention(shape, dtype):
    _assert_matches(attn_mod.attention, functional.causal_attention, shape, dtype)


# Every padded and masked size under the interpreter; on a GPU (a cold compile of three kernels each) only those the
# bf16 test at real sizes below does not run: the smallest, one masked in 64, one over 128, and 256 exact.
HEAD_DIMS = [2, 48, 130, 256] if torch.cuda.is_available() else [2, 16, 24, 48, 80, 96, 130, 256]


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_attention_takes_every_head_dim_up_to_256_padded_and_masked(head_dim):
    # 32, 64, 128 and 256 are held exactly; the others run padded to the next one with the extra columns masked.
    _assert_matches(attn_mod.attention, functional.causal_attention, (1, 2, 37, head_dim), EXACT, seed=2)


def test_attention_matches_written_out_softmax_with_tril_mask(dtype):
    _assert_matches(attn_mod.attention, _written_out_causal, (2, 3, 41, 64), dtype, seed=3)


@pytest.mark.parametrize("scale", [0.3, 0.0, -0.3])
def test_attention_honours_an_explicit_scale_of_any_sign(scale):
    _assert_matches(attn_mod.attention, _written_out_causal, (1, 2, 50, 32), EXACT, seed=5, scale=scale)


def test_attention_with_a_negative_scale_stays_finite_on_large_scores():
    # This gave NaN: the forward took max(qk) * scale as the row max, which is the min when scale < 0, and with
    # scores this large exp2(score - min) overflows. The reference runs in fp64 (near one-hot rows cancel).
    q, k, v = (t.detach().mul(4.0).requires_grad_() for t in _qkv((1, 2, 50, 32), EXACT, seed=6))
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(7)).to(q)
    actual = _forward_backward(attn_mod.attention, q, k, v, grad, scale=-0.3)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    expected = _forward_backward(_written_out_causal, q64, k64, v64, grad.double(), scale=-0.3)
    atol, rtol = (1e-4, 1e-4) if EXACT == torch.float32 else ATTENTION_TOLERANCES[EXACT]
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert torch.isfinite(a).all(), name
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)


# ---------------------------------------------------------------- grouped heads, documents, RoPE inside


@pytest.mark.parametrize("q_heads, kv_heads", [(4, 4), (4, 2), (8, 2), (16, 2), (3, 1)],
                         ids=["ratio 1", "ratio 2", "ratio 4", "ratio 8", "MQA"])
def test_grouped_query_attention_matches_repeated_kv_heads(q_heads, kv_heads, dtype):
    _assert_matches_oracle((1, q_heads, 45, 32), kv_heads, dtype, seed=21)


DOC_LAYOUTS = {
    "one document": lambda t: ((t,), (t,)),
    "many short documents": lambda t: ((3, 5, 1, 7, 4, 2, 6, 8, 3, t - 39), (1,) * 10 + (t - 10,)),
    "a boundary inside a tile": lambda t: ((21, t - 21), (37, t - 37)),
    "a document longer than the window": lambda t: ((t - 5, 5), (t,)),
    "documents of whole tiles": lambda t: ((32, 32, t - 64), (16, 48, t - 64)),
}


@pytest.mark.parametrize("layout", DOC_LAYOUTS)
def test_document_masked_attention_matches_an_explicit_same_document_mask(layout, dtype):
    doc_ids = _docs(*DOC_LAYOUTS[layout](70), first_id=5)  # ids need not start at 0, only never decrease
    _assert_matches_oracle((2, 4, 70, 32), 2, dtype, doc_ids=doc_ids, seed=22)


@pytest.mark.parametrize("rope", [False, True], ids=["attention", "rope_attention"])
def test_grouped_document_attention_matches_the_functional_reference(rope, dtype):
    # functional.causal_attention / rope_attention with grouped k/v heads and doc_ids: the ops' own references.
    doc_ids = _docs((11, 25, 19), (40, 15))
    positions = _doc_positions(doc_ids.cpu())
    cos, sin = (x.to(kernel_device()) for x in functional.rope_cos_sin(10000.0, 32, positions))
    if rope:
        fn = lambda q, k, v: attn_mod.rope_attention(q, k, v, cos, sin, doc_ids=doc_ids)  # noqa: E731
        ref = lambda q, k, v: functional.rope_attention(q, k, v, cos, sin, doc_ids=doc_ids)  # noqa: E731
    else:
        fn = lambda q, k, v: attn_mod.attention(q, k, v, doc_ids=doc_ids)  # noqa: E731
        ref = lambda q, k, v: functional.causal_attention(q, k, v, doc_ids=doc_ids)  # noqa: E731
    gen = torch.Generator().manual_seed(30)
    q = torch.randn(2, 4, 55, 32, generator=gen).to(kernel_device(), dtype).requires_grad_()
    k, v = (torch.randn(2, 2, 55, 32, generator=gen).to(kernel_device(), dtype).requires_grad_() for _ in range(2))
    grad = torch.randn(q.shape, generator=gen).to(q)
    actual = _forward_backward(fn, q, k, v, grad)
    expected = _exact(ref, q, k, v, grad)
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert_verbose_allclose(a, e, *ATTENTION_TOLERANCES[dtype], name=name)


def test_document_ids_of_either_int_dtype_give_one_result():
    doc_ids = _docs((20, 30), (9, 41))
    _assert_matches_oracle((2, 2, 50, 32), 1, EXACT, doc_ids=doc_ids.long(), seed=23)


@pytest.mark.parametrize("positions", ["sequence", "per document"])
@pytest.mark.parametrize("q_heads, kv_heads, head_dim", [(2, 2, 32), (4, 1, 64), (4, 2, 48)])
def test_rope_inside_attention_matches_rope_then_attention(positions, q_heads, kv_heads, head_dim, dtype):
    doc_ids = _docs((11, 25, 19), (40, 15)) if positions == "per document" else None
    _assert_matches_oracle((2, q_heads, 55, head_dim), kv_heads, dtype, doc_ids=doc_ids, rope=True, seed=24)


def test_rope_attention_matches_the_functional_reference(dtype):
    # functional.rope_attention (rope then causal_attention) is the op's reference; one table for the batch here.
    b, h, t, d = 2, 2, 40, 32
    cos, sin = (x.to(kernel_device()) for x in functional.rope_cos_sin(500.0, d, torch.arange(t)))
    _assert_matches(lambda q, k, v: attn_mod.rope_attention(q, k, v, cos, sin),
                    lambda q, k, v: functional.rope_attention(q, k, v, cos, sin), (b, h, t, d), dtype, seed=25)


def _nan_rows(t, rows):
    t = t.detach().clone()
    t[:, :, rows] = float("nan")
    return t.requires_grad_()


@pytest.mark.filterwarnings("ignore:All-NaN slice")
def test_document_tiles_left_of_a_query_block_are_skipped_not_masked():
    # Under the interpreter's blocks (32 query rows, 16 keys) the second document starts on a tile boundary. NaN in
    # the first document's keys and values would reach every row that loads them, masked or not (0 * NaN = NaN):
    # the second document's outputs and dQ stay finite, and equal attention over it alone, only if its query blocks
    # never load those tiles.
    doc_ids = _docs((32, 64))
    q, k, v = _qkv((1, 2, 96, 32), EXACT, seed=26)
    k, v = _nan_rows(k, slice(0, 32)), _nan_rows(v, slice(0, 32))
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(27)).to(q)
    out, dq, _, _ = _forward_backward(lambda q, k, v: attn_mod.attention(q, k, v, doc_ids=doc_ids), q, k, v, grad)
    alone = _exact(functional.causal_attention, *(t[:, :, 32:] for t in (q, k, v)), grad[:, :, 32:])
    assert_verbose_allclose(out[:, :, 32:], alone[0], *ATTENTION_TOLERANCES[EXACT], name="out")
    assert_verbose_allclose(dq[:, :, 32:], alone[1], *ATTENTION_TOLERANCES[EXACT], name="dq")


@pytest.mark.filterwarnings("ignore:All-NaN slice")
def test_document_queries_right_of_a_key_block_are_skipped_in_the_backward():
    # The dK/dV pass stops each key block's walk at its document's end: NaN queries and gradients of the second
    # document leave the first document's dK and dV finite.
    doc_ids = _docs((32, 64))
    q, k, v = _qkv((1, 2, 96, 32), EXACT, seed=28)
    q = _nan_rows(q, slice(32, 96))
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(29)).to(q)
    grad[:, :, 32:] = float("nan")
    _, _, dk, dv = _forward_backward(lambda q, k, v: attn_mod.attention(q, k, v, doc_ids=doc_ids), q, k, v, grad)
    alone = _exact(functional.causal_attention, *(t[:, :, :32] for t in (q, k, v)), grad[:, :, :32])
    assert_verbose_allclose(dk[:, :, :32], alone[2], *ATTENTION_TOLERANCES[EXACT], name="dk")
    assert_verbose_allclose(dv[:, :, :32], alone[3], *ATTENTION_TOLERANCES[EXACT], name="dv")


def test_document_bounds_give_each_rows_document_start_and_end():
    starts, ends = attn_mod.document_bounds(torch.tensor([[3, 3, 4, 4, 4, 9], [0, 0, 0, 0, 0, 0]]))
    assert starts.tolist() == [[0, 0, 2, 2, 2, 5], [0] * 6]
    assert ends.tolist() == [[2, 2, 5, 5, 5, 6], [6] * 6]
    assert starts.dtype == ends.dtype == torch.int32


@pytest.mark.slow
def test_attention_runs_every_gpu_block_configuration_correctly_in_fp16(monkeypatch):
    # The GPU tables run here under the interpreter, in fp16 as on a GPU, so a block choice that breaks the kernels'
    # assumptions (BLOCK_N dividing BLOCK_M and the like) fails without a GPU. Each distinct entry runs with grouped
    # heads and documents (one boundary mid-tile), at its padded head dim and below it (masked); seq 150 is ragged
    # for every block size in the tables.
    # On a GPU, its own generation's table: that is what a GPU adds (each entry compiled for real), and the other
    # table's entries, compiled for this GPU, would be different kernels from those that generation runs.
    force_cuda_attention_dtypes(monkeypatch)
    assert set(configs.GPU_CONFIGS) == {"sm80", "sm90"}
    tables = ([configs.generation(torch.device("cuda"))] if kernel_device() == "cuda" else list(configs.GPU_CONFIGS))
    seen = set()
    doc_ids = _docs((70, 80))
    for gen, table in ((g, configs.GPU_CONFIGS[g]) for g in tables):
        assert set(table) == {(d, r) for d in configs.PADDED_HEAD_DIMS for r in (False, True)}
        for (padded, rope), cfgs in table.items():
            monkeypatch.setattr(attn_mod, "configs_for", lambda *a, cfgs=cfgs: cfgs)
            for head_dim in (padded, padded - 6):
                if (cfgs, head_dim, rope) in seen:
                    continue
                seen.add((cfgs, head_dim, rope))
                try:
                    _assert_matches_oracle((1, 2, 150, head_dim), 1, torch.float16, doc_ids=doc_ids, rope=rope)
                except AssertionError as e:
                    raise AssertionError(f"GPU configuration {gen} head_dim={head_dim} rope={rope} {cfgs}: {e}") from e
    assert len(seen) >= 2 * len(configs.PADDED_HEAD_DIMS)


def test_every_tuning_candidate_keeps_the_block_divisibility_the_kernels_assume():
    # A GPU lease times these against the shipped table (benchmarks/attention_configs.py); the fastest may be
    # shipped, so each must be a choice the kernels are correct for: the divisibility of the Configs fields.
    found = [(gen, key, pass_, c) for gen, by_key in configs.TUNING_CANDIDATES.items()
             for key, by_pass in by_key.items() for pass_, cs in by_pass.items() for c in cs]
    assert found and {(gen, key) for gen, key, _, _ in found} <= {
        (g, (d, r)) for g in configs.GPU_CONFIGS for d in (64, 128) for r in (False, True)}
    for gen, key, pass_, c in found:
        small, big = (c.block_m, c.block_n) if pass_ == "dkdv" else (c.block_n, c.block_m)
        assert big % small == 0 and c.num_warps in (4, 8), (gen, key, pass_, c)


def test_attention_accepts_transposed_inputs_and_an_expanded_gradient(dtype):
    # q/k/v as views of a (batch, seq, heads, head_dim) projection, and out.sum()'s stride-0 incoming gradient.
    q, k, v = (t.detach().transpose(1, 2).requires_grad_() for t in _qkv((2, 37, 3, 32), dtype, seed=7))
    assert not q.is_contiguous()
    grads = torch.autograd.grad(attn_mod.attention(q, k, v).sum(), (q, k, v))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    expected = torch.autograd.grad(functional.causal_attention(q32, k32, v32).sum(), (q32, k32, v32))
    atol, rtol = ATTENTION_TOLERANCES[dtype]
    for name, a, e in zip(("dq", "dk", "dv"), grads, expected, strict=True):
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)


def test_attention_of_an_empty_batch_is_empty(dtype):
    q, k, v = _qkv((0, 2, 5, 32), dtype)
    out = attn_mod.attention(q, k, v)
    out.sum().backward()
    assert out.shape == (0, 2, 5, 32) and q.grad.shape == q.shape


@pytest.mark.parametrize("features", ["plain", "gqa, rope, documents"])
def test_attention_op_registration_passes_opcheck(features, dtype):
    # Schema, fake (meta) kernel and autograd registration of lmfast::attention, as torch.compile relies on them.
    q, k, v = _qkv((1, 2, 20, 32), dtype, seed=9)
    args = (q, k, v, None, None, None, None, 0.2)
    if features != "plain":
        cos, sin = (x.to(kernel_device()) for x in functional.rope_cos_sin(10000.0, 32, torch.arange(20)))
        starts, ends = attn_mod.document_bounds(_docs((7, 13)))
        args = (q, k[:, :1].detach().requires_grad_(), v[:, :1].detach().requires_grad_(), cos, sin, starts, ends, 0.2)
    torch.library.opcheck(torch.ops.lmfast.attention.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_attention_traces_into_one_graph_under_torch_compile(dtype):
    # fullgraph=True fails on any graph break. The "eager" backend runs the captured graph as it is: the AOT pass of
    # the other backends runs the op's body on fake tensors, and under the interpreter wrap_triton hands back the
    # raw (interpreted) kernel, which cannot launch on them. Inductor is covered by the gpu test below.
    q, k, v = _qkv((1, 2, 40, 32), dtype, seed=11)
    grad = torch.randn(1, 2, 40, 32, generator=torch.Generator().manual_seed(12)).to(q)
    step = torch.compile(lambda q, k, v: attn_mod.attention(q * 2.0, k, v), backend="eager", fullgraph=True)
    actual = _forward_backward(step, q, k, v, grad)
    expected = _exact(lambda q, k, v: functional.causal_attention(q * 2.0, k, v), q, k, v, grad)
    atol, rtol = ATTENTION_TOLERANCES[dtype]
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)


@pytest.mark.parametrize("make, match", [
    (lambda dt: _qkv((3, 16, 32), dt), "shape \\(batch, heads, seq, head_dim\\)"),
    (lambda dt: [*_qkv((1, 2, 16, 32), dt)[:2], torch.randn(1, 2, 17, 32).to(kernel_device(), dt)], "one shape"),
    (lambda dt: [_qkv((1, 3, 16, 32), dt)[0], *_qkv((1, 2, 16, 32), dt)[:2]], "kv_heads dividing q's heads"),
    (lambda dt: _qkv((1, 2, 16, 258), dt), "head_dim must be at most 256, got head_dim=258"),
    (lambda dt: _qkv((1, 2, 16, 32), torch.float64), "dtype torch.float64"),
    (lambda dt: [*_qkv((1, 2, 16, 32), dt)[:2], torch.zeros(1, 2, 16, 32, dtype=torch.int32, device=kernel_device())],
     "v has dtype torch.int32"),
    (lambda dt: [*_qkv((1, 2, 16, 32), dt)[:2], torch.zeros(1, 2, 16, 32, dtype=torch.bfloat16,
                                                              device=kernel_device())], "share a dtype"),
    (lambda dt: _qkv((65536, 1, 1, 32), dt), "batch \\* heads must be at most 65535"),
])
def test_attention_rejects_bad_inputs_with_a_value_error(make, match, dtype):
    with pytest.raises(ValueError, match=match):
        attn_mod.attention(*make(dtype))


@pytest.mark.parametrize("doc_ids, match", [
    (torch.tensor([[0, 1, 1, 0]]), "non-decreasing"),
    (torch.tensor([[0, 0, 1]]), r"shape \(batch, seq\) = \(1, 4\)"),
    (torch.tensor([[0.0, 0, 1, 1]]), "doc_ids has dtype torch.float32"),
])
def test_attention_rejects_bad_document_ids_with_a_value_error(doc_ids, match):
    with pytest.raises(ValueError, match=match):
        attn_mod.attention(*_qkv((1, 2, 4, 32), EXACT), doc_ids=doc_ids.to(kernel_device()))


def test_rope_attention_rejects_angle_tables_of_another_shape():
    cos = torch.ones(5, 16, device=kernel_device())
    with pytest.raises(ValueError, match="cos and sin must have shape"):
        attn_mod.rope_attention(*_qkv((1, 2, 4, 32), EXACT), cos, cos)


def test_attention_refuses_fp32_under_the_cuda_dtype_rule(monkeypatch):
    # On a GPU tl.dot rounds fp32 to tf32; the fused backend sends fp32 to SDPA instead (test_backend_dispatch.py).
    force_cuda_attention_dtypes(monkeypatch)
    with pytest.raises(ValueError, match="q has dtype torch.float32; allowed: float16, bfloat16"):
        attn_mod.attention(*_qkv((1, 2, 16, 32), torch.float32))


# ---------------------------------------------------------------- GPU: bf16 at real sizes, torch.compile


def _assert_as_close_as_reference(actual, reference, exact, name):
    """``actual`` (bf16 kernel) is within twice the error of ``reference`` (bf16 PyTorch) from ``exact`` (fp32)."""
    ref_err = (reference.float() - exact).abs().max().item()
    atol = 2 * ref_err + TOLERANCES[torch.bfloat16][0]
    assert_verbose_allclose(actual.float(), exact, atol=atol, rtol=0.0, name=f"{name} (reference error {ref_err:.3g})")


# One shape per table of the GPU's generation, at real sizes in bf16 (which the interpreter cannot run): 64 and 128
# exact (one sequence ragged), 16 and 32, and 96 and 200 masked inside 128 and 256. Every other head dim runs in fp16
# above, on a GPU too.
@pytest.mark.gpu
@pytest.mark.parametrize("seq, head_dim", [(2048, 64), (1031, 128), (1024, 32), (777, 16), (1000, 96), (300, 200)])
def test_attention_matches_reference_in_bf16_at_real_sizes(seq, head_dim):
    shape = (2, 4, seq, head_dim)
    q, k, v = _qkv(shape, torch.bfloat16, device="cuda")
    grad = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    actual = _forward_backward(attn_mod.attention, q, k, v, grad)
    reference = _forward_backward(functional.causal_attention, q, k, v, grad)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    exact = _forward_backward(functional.causal_attention, q32, k32, v32, grad.float())
    for name, a, r, e in zip(("out", "dq", "dk", "dv"), actual, reference, exact, strict=True):
        _assert_as_close_as_reference(a, r, e, name)


@pytest.mark.gpu
def test_attention_backward_is_deterministic_on_gpu():
    q, k, v = _qkv((2, 4, 2048, 64), torch.bfloat16, device="cuda")
    grad = torch.randn_like(q)
    first = _forward_backward(attn_mod.attention, q, k, v, grad)
    second = _forward_backward(attn_mod.attention, q, k, v, grad)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_attention_under_torch_compile_fullgraph_matches_eager(backend):
    # Both AOT-autograd backends, which the interpreter cannot run (see the eager-backend test above).
    q, k, v = _qkv((2, 4, 1024, 128), torch.bfloat16, device="cuda")
    grad = torch.randn_like(q)

    def step(q, k, v):
        return attn_mod.attention(q * 1.0, k, v, scale=1 / math.sqrt(q.shape[-1]))

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    actual = _forward_backward(compiled, q, k, v, grad)
    expected = _forward_backward(step, q, k, v, grad)
    atol, rtol = TOLERANCES[torch.bfloat16]
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)
