"""lmfast.optim against torch.optim.AdamW, torch's clip_grad_norm_, and the CS336 schedule values."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _kernel_utils import assert_verbose_allclose

from lmfast.optim import AdamW, adamw_step_reference, clip_grad_norm_, cosine_lr


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2), (11,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _grads(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


def _groups(params: list[torch.nn.Parameter]) -> list[dict]:
    return [
        {"params": params[:2]},  # defaults: lr 1e-2, weight decay 0.1
        {"params": params[2:], "lr": 3e-3, "weight_decay": 0.0, "betas": (0.8, 0.95)},
    ]


def _run(opt_cls, params, steps: int, **kw) -> list[list[torch.Tensor]]:
    opt = opt_cls(_groups(params), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, **kw)
    history = []
    for step in range(steps):
        for p, g in zip(params, _grads(params, step), strict=True):
            p.grad = g
        opt.step()
        history.append([p.detach().clone() for p in params])
    return history


# ---------------------------------------------------------------------------------------------- AdamW


def test_adamw_matches_torch_adamw_step_by_step_with_two_param_groups():
    ours, ref = _run(AdamW, _params(), 6), _run(torch.optim.AdamW, _params(), 6)
    assert len(ours) == 6
    for step, (a, b) in enumerate(zip(ours, ref, strict=True)):
        for i, (pa, pb) in enumerate(zip(a, b, strict=True)):
            assert_verbose_allclose(pa, pb, 1e-7, 1e-6, f"step {step} param {i}")


def test_adamw_multi_tensor_path_equals_torch_foreach_adamw_bit_for_bit(monkeypatch):
    # Off CPU (or without torch's fused kernel) the step runs as torch._foreach_* ops in torch's own order.
    monkeypatch.delattr(torch, "_fused_adamw_")
    ours = _run(AdamW, _params(), 4, fused=False)
    monkeypatch.undo()
    ref = _run(torch.optim.AdamW, _params(), 4, foreach=True)
    for step, (a, b) in enumerate(zip(ours, ref, strict=True)):
        for i, (pa, pb) in enumerate(zip(a, b, strict=True)):
            assert torch.equal(pa, pb), f"step {step} param {i}: max diff {(pa - pb).abs().max().item():.3g}"


def test_adamw_moves_parameters_and_decays_weights_without_gradient_signal():
    p = torch.nn.Parameter(torch.full((4,), 2.0))
    opt = AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros(4)
    opt.step()
    # zero gradient: the Adam update is 0, only the decoupled decay p *= 1 - lr * wd acts
    assert_verbose_allclose(p.detach(), torch.full((4,), 2.0 * (1 - 0.05)), 1e-7, 1e-7, "decayed")


def test_adamw_reference_loop_and_multi_tensor_path_agree():
    params = [p.detach() for p in _params()]
    grads = _grads(params, 0)
    results = []
    for lr in (1e-2, torch.tensor(1e-2)):  # a tensor lr takes the per-tensor loop
        ps = [p.clone() for p in params]
        ms, vs = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]
        for step in (1, 2, 3):
            adamw_step_reference(ps, grads, ms, vs, step=step, lr=lr, beta1=0.9, beta2=0.99, eps=1e-8,
                                 weight_decay=0.1)
        results.append(ps)
    for i, (a, b) in enumerate(zip(*results, strict=True)):
        assert_verbose_allclose(a, b, 1e-7, 1e-6, f"param {i}")


@pytest.mark.parametrize("lr", [1e-2, torch.tensor(1e-2)], ids=["multi-tensor", "per-tensor"])
def test_adamw_adds_eps_after_the_square_root_like_torch_on_tiny_gradients(lr):
    # Gradients of ~1e-8 put sqrt(v_hat) next to eps, where eps added to the root and eps added under it differ
    # by ~30% of the update; with unit gradients they agree to 1e-9 and no other test could tell them apart.
    ours, ref = _params(), _params()
    opt, ref_opt = AdamW(ours, lr=lr, weight_decay=0.0), torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.0)
    for step in range(3):
        for ps in (ours, ref):
            for p, g in zip(ps, _grads(ps, step), strict=True):
                p.grad = g * 1e-8
        opt.step()
        ref_opt.step()
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert_verbose_allclose(a, b, 1e-7, 1e-6, f"param {i}")


def test_adamw_keeps_float32_state_for_bfloat16_parameters_and_tracks_fp32_run():
    p32 = torch.nn.Parameter(torch.randn(64))
    p16 = torch.nn.Parameter(p32.detach().bfloat16())
    o32, o16 = AdamW([p32], lr=1e-2), AdamW([p16], lr=1e-2)
    for step in range(3):
        g = _grads([p32], step)[0]
        p32.grad, p16.grad = g, g.bfloat16()
        o32.step()
        o16.step()
    state = o16.state[p16]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    assert p16.dtype == torch.bfloat16
    assert_verbose_allclose(p16, p32, 2e-2, 2e-2, "bf16 params")


def test_adamw_state_dict_round_trip_continues_identically():
    params = _params()
    opt = AdamW(_groups(params), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        for p, g in zip(params, _grads(params, step), strict=True):
            p.grad = g
        opt.step()
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    restored = AdamW(_groups(twins), lr=1.0, weight_decay=0.0)
    restored.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert restored.param_groups[1]["lr"] == 3e-3
    for step in range(3, 6):
        for ps in (params, twins):
            for p, g in zip(ps, _grads(ps, step), strict=True):
                p.grad = g
        opt.step()
        restored.step()
    for a, b in zip(params, twins, strict=True):
        assert torch.equal(a, b)
    assert restored.state[twins[0]]["step"].item() == 6


def test_adamw_skips_parameters_without_gradients():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = AdamW([a, b], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3)) and b not in opt.state
    assert not torch.equal(a.detach(), torch.ones(3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": -1e-3}, "lr"),
        ({"betas": (1.0, 0.999)}, "betas"),
        ({"betas": (0.9, -0.1)}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_adamw_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamW([torch.nn.Parameter(torch.ones(2))], **kwargs)


def test_adamw_step_reference_rejects_step_zero():
    p = torch.ones(2)
    with pytest.raises(ValueError, match="counts from 1"):
        adamw_step_reference([p], [p], [p.clone()], [p.clone()], step=0, lr=1e-3, beta1=0.9, beta2=0.99,
                             eps=1e-8, weight_decay=0.0)


def test_adamw_rejects_sparse_gradients():
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.ones(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        AdamW([p]).step()


# ---------------------------------------------------------------------------------------------- schedule

CS336_EXPECTED_LRS = [
    0, 0.14285714285714285, 0.2857142857142857, 0.42857142857142855, 0.5714285714285714, 0.7142857142857143,
    0.8571428571428571, 1.0, 0.9887175604818206, 0.9554359905560885, 0.9018241671106134, 0.8305704108364301,
    0.7452476826029011, 0.6501344202803414, 0.55, 0.44986557971965857, 0.3547523173970989, 0.26942958916356996,
    0.19817583288938662, 0.14456400944391146, 0.11128243951817937, 0.1, 0.1, 0.1, 0.1,
]


def test_cosine_lr_matches_the_cs336_reference_values():
    actual = [cosine_lr(it, 1.0, 0.1, 7, 21) for it in range(25)]
    assert actual == pytest.approx(CS336_EXPECTED_LRS, abs=1e-12)


@pytest.mark.parametrize(
    "it, expected",
    [
        (0, 0.0),  # warmup starts at 0
        (5, 3e-4),  # warmup: linear
        (10, 6e-4),  # peak
        (60, 6e-5 + (6e-4 - 6e-5) * 0.5),  # halfway through the cosine: the midpoint of max and min
        (110, 6e-5),  # end of the cycle
        (5000, 6e-5),  # after: flat at min
    ],
)
def test_cosine_lr_at_warmup_peak_middle_end_and_after(it, expected):
    assert cosine_lr(it, 6e-4, 6e-5, 10, 110) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_cosine_lr_is_monotone_in_warmup_and_decay():
    lrs = [cosine_lr(it, 1.0, 0.1, 10, 100) for it in range(120)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert math.isclose(max(lrs), 1.0) and math.isclose(min(lrs[10:]), 0.1)


def test_cosine_lr_without_warmup_starts_at_max():
    assert cosine_lr(0, 1.0, 0.1, 0, 10) == 1.0
    assert cosine_lr(10, 1.0, 0.1, 0, 10) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("max_norm", [1e3, 0.5, 1e-2])
def test_clip_grad_norm_matches_torch_below_and_above_threshold(max_norm):
    ours, ref = _params(), _params()
    for ps in (ours, ref):
        for p, g in zip(ps, _grads(ps, 0), strict=True):
            p.grad = g
    ours.append(torch.nn.Parameter(torch.ones(2)))  # a parameter without a gradient is ignored
    norm = clip_grad_norm_(ours, max_norm)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert_verbose_allclose(norm, ref_norm, 1e-6, 1e-6, "norm before clipping")
    for i, (a, b) in enumerate(zip(ours, ref, strict=False)):
        assert_verbose_allclose(a.grad, b.grad, 1e-7, 1e-6, f"grad {i}")
    after = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ref]))
    assert after <= max_norm * (1 + 1e-5)
    assert ours[-1].grad is None


def test_clip_grad_norm_scales_by_max_norm_over_norm_plus_eps():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])  # norm 5
    assert clip_grad_norm_([p], 1.0).item() == pytest.approx(5.0)
    assert_verbose_allclose(p.grad, torch.tensor([3.0, 4.0]) * (1.0 / (5.0 + 1e-6)), 0.0, 1e-7, "clipped")


def test_clip_grad_norm_without_gradients_returns_zero():
    assert clip_grad_norm_([torch.nn.Parameter(torch.ones(3))], 1.0).item() == 0.0
