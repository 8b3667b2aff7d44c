"""Document-masked causal attention on the GPU: lmfast's kernel (tiles across documents skipped) against
FlexAttention with a document block mask and SDPA with a dense mask, in TFLOPS of the work the mask leaves.

    pytest benchmarks/bench_document_attention.py --benchmark-only

Providers: ``fused`` (``lmfast.kernels.attention.attention(..., doc_ids=)``), ``flex`` (``torch.compile`` of
``flex_attention`` with ``create_block_mask`` over the same documents: block sparsity, FlexAttention's answer),
``sdpa-dense`` (``F.scaled_dot_product_attention`` with a (batch, 1, seq, seq) boolean mask: what the reference
does; the mask rules out SDPA's flash kernels). bf16, fwd+bwd, seq 2048 with 8 documents a window (lengths drawn
around 256, the same for every provider), batch * seq = 16k tokens, 16 query heads and 4 kv heads (GQA), head
dim 64 and 128. FLOPs count only the pairs the mask keeps (sum over documents of L^2 / 2), so every provider is
scored on the same work. Targets on an H100/H200: fused >= 1.0x flex and >= 2x sdpa-dense. Skipped without CUDA.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

import torch.nn.functional as F
from lmfast.kernels.attention import attention as fused_attention

# Imported above on any machine, so collecting this file without a GPU shows a broken import (the CPU rehearsal of
# benchmarks/gpu_check.sh does); only running needs CUDA.
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="attention benchmarks need a CUDA GPU")

SEQ, TOKENS, DOCS, Q_HEADS, KV_HEADS = 2048, 16384, 8, 16, 4
HEAD_DIMS = (64, 128)
QUICK = os.environ.get("LMFAST_BENCH_QUICK") == "1"


def _doc_ids(batch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(batch):
        cuts = torch.randperm(SEQ - 1, generator=gen)[: DOCS - 1].sort().values + 1
        lengths = torch.diff(torch.cat([torch.tensor([0]), cuts, torch.tensor([SEQ])]))
        rows.append(torch.repeat_interleave(torch.arange(DOCS, dtype=torch.int32), lengths))
    return torch.stack(rows).cuda()


def _flops(doc_ids: torch.Tensor, head_dim: int) -> float:
    rows = torch.arange(doc_ids.shape[0]).repeat_interleave(SEQ)  # keeps documents of two rows apart
    lengths = torch.unique_consecutive(doc_ids.cpu().flatten() + 1000 * rows, return_counts=True)[1].double()
    fwd = 4 * Q_HEADS * head_dim * float((lengths * lengths / 2).sum())
    return 3.5 * fwd  # forward + backward (2.5x the forward)


def _providers(doc_ids: torch.Tensor):
    def fused(q, k, v):
        return fused_attention(q, k, v, doc_ids=doc_ids)

    causal = torch.ones(SEQ, SEQ, dtype=torch.bool, device="cuda").tril()
    dense = (doc_ids[:, None, :, None] == doc_ids[:, None, None, :]) & causal

    def sdpa_dense(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=True)

    providers = {"fused": fused, "sdpa-dense": sdpa_dense}
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return providers

    def same_doc(b, h, q_idx, kv_idx):
        return (doc_ids[b, q_idx] == doc_ids[b, kv_idx]) & (q_idx >= kv_idx)

    block_mask = create_block_mask(same_doc, doc_ids.shape[0], None, SEQ, SEQ, device="cuda")
    flex = torch.compile(flex_attention, dynamic=False)
    providers["flex"] = lambda q, k, v: flex(q, k, v, block_mask=block_mask, enable_gqa=True)
    return providers


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("provider", ("fused", "flex", "sdpa-dense"))
def test_document_attention_tflops(benchmark, provider, head_dim):
    batch = TOKENS // SEQ
    doc_ids = _doc_ids(batch)
    fns = _providers(doc_ids)
    if provider not in fns:
        pytest.skip(f"{provider} is not available in this torch")
    q = torch.randn(batch, Q_HEADS, SEQ, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(batch, KV_HEADS, SEQ, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            for _ in range(2))
    grad = torch.randn_like(q)

    def run():
        torch.autograd.grad(fns[provider](q, k, v), (q, k, v), grad)
        torch.cuda.synchronize()

    try:
        run()  # compiles and autotunes outside the timed rounds
    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
        pytest.skip(f"{provider} at head_dim {head_dim}: {str(e).splitlines()[0][:200]}")
    benchmark.group = f"document attention fwd+bwd head_dim={head_dim} seq={SEQ} docs={DOCS}"
    benchmark.pedantic(run, rounds=5 if QUICK else 10, warmup_rounds=1, iterations=1)
    if benchmark.stats is not None:
        benchmark.extra_info["tflops"] = round(_flops(doc_ids, head_dim) / benchmark.stats.stats.mean / 1e12, 1)
