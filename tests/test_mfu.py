"""The MFU table: names as torch reports them map to the right part's dense peak; unknown devices get None."""

import pytest
import torch

from lmfast.mfu import mfu, peak_flops


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
