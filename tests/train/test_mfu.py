"""MFU: names as torch reports them map to the right part's dense peak, unknown devices get None, and the model's
FLOPs per token equal the FLOPs of a training step counted by torch."""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmfast import functional
from lmfast.model import TransformerLM
from lmfast.train.mfu import device_peak_flops, mfu, peak_flops


@pytest.mark.parametrize("name, dtype, tflops", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.0),
    ("NVIDIA H100 PCIe", torch.bfloat16, 756.0),
    ("NVIDIA H100 NVL", torch.float16, 835.0),
    ("NVIDIA H200", torch.bfloat16, 989.0),
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
    ("NVIDIA A10", torch.bfloat16, 125.0),
    ("NVIDIA A10G", torch.bfloat16, 70.0),
    ("NVIDIA L4", torch.bfloat16, 121.0),
    ("NVIDIA L40S", torch.bfloat16, 362.0),
    ("NVIDIA GeForce RTX 4090", torch.bfloat16, 165.2),
    ("NVIDIA A100-SXM4-40GB", torch.float32, 19.5),
])
def test_peak_flops_picks_the_most_specific_part(name, dtype, tflops):
    assert peak_flops(name, dtype) == pytest.approx(tflops * 1e12)


def test_fp32_peak_uses_tf32_tensor_cores_only_when_allowed():
    assert peak_flops("NVIDIA H100 80GB HBM3", torch.float32, tf32=True) == pytest.approx(494e12)
    assert peak_flops("NVIDIA H100 80GB HBM3", torch.float32, tf32=False) == pytest.approx(67e12)


def test_unknown_device_has_no_peak_and_no_mfu():
    assert peak_flops("Some Future Accelerator 9000", torch.bfloat16) is None
    assert mfu(1e5, 1e9, None) is None


def test_mfu_is_achieved_over_peak():
    assert mfu(tokens_per_s=100_000, flops_per_token=1e9, peak=1e15) == pytest.approx(0.1)


def test_device_peak_flops_reads_the_cuda_device_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert device_peak_flops("cuda", torch.bfloat16) == pytest.approx(989e12)
    assert device_peak_flops("cpu", torch.bfloat16) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future Accelerator 9000")
    assert device_peak_flops("cuda", torch.bfloat16) is None


def test_flops_per_token_equals_the_flops_counted_in_a_training_step():
    """6·N + 12·L·d·T: counted matmul by matmul (attention written out, so its QK^T and PV count at full T×T)."""
    torch.manual_seed(0)
    vocab, context, d, layers = 97, 24, 64, 2
    model = TransformerLM(vocab, context, d, layers, num_heads=4, d_ff=160, rope_theta=10000.0, backend="reference")

    def attention(q, k, v, scale=None, *, doc_ids=None):
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        return functional.scaled_dot_product_attention(q, k, v, causal)

    def rope_attention(q, k, v, cos, sin, scale=None, *, doc_ids=None):  # the model's call without a KV cache
        return attention(*functional.rope(q, k, cos, sin), v, scale)

    for layer in model.layers:
        layer.attn.ops = dataclasses.replace(layer.attn.ops, attention=attention, rope_attention=rope_attention)
    ids = torch.randint(0, vocab, (3, context))
    with FlopCounterMode(display=False) as counter:
        functional.cross_entropy(model(ids), ids).backward()
    counted = counter.get_total_flops() / ids.numel()
    norm_gains = (2 * layers + 1) * d  # in N, but elementwise: no matmul FLOPs
    assert counted == model.flops_per_token() - 6 * norm_gains
    assert counted - 6 * (model.num_parameters(exclude_embeddings=True) - norm_gains) == 12 * layers * d * context
