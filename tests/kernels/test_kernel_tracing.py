"""Every fused op traces whole under torch.compile(fullgraph=True), on CPU, and the compiled call equals the reference.

The backend is "eager": dynamo captures the graph (fullgraph=True fails on any graph break, and
``torch._dynamo.explain`` counts graphs and breaks) and runs it as captured. The AOT-autograd backends
(inductor, aot_eager) cannot run here: under the interpreter (TRITON_INTERPRET=1) AOT autograd cannot run any
triton_op, a one-kernel probe fails the same way, because the functional pass hands functional tensors to the
interpreted kernel. The gpu-marked tests in the kernel test files run inductor and aot_eager on a GPU.

Forward ops are traced inside a function whose backward then runs the op's registered autograd; the backward ops
(``lmfast::rmsnorm_bwd``, ``lmfast::rope_bwd``, ``lmfast::attention_backward``) are traced on their own, called
as the autograd formula calls them. A whole TransformerLM with the fused ops forced on CPU tensors (a test-only
switch, tests/_kernel_utils.py) traces as one graph too.
"""

from __future__ import annotations

import pytest
import torch
from _kernel_utils import TOLERANCES, assert_verbose_allclose, force_fused_ops_on_cpu, requires_triton

from lmfast.model import functional
from lmfast.train.optim import adamw_step_reference

pytestmark = [requires_triton, pytest.mark.skipif(torch.cuda.is_available(), reason="CPU interpreter tracing")]


def _traced_once(fn, *args):
    """``fn`` compiled with fullgraph=True on the eager backend, after checking dynamo sees 1 graph, 0 breaks."""
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    return torch.compile(fn, backend="eager", fullgraph=True)


def _grads(out_fn, inputs, grad):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = out_fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, grad))


def _close(actual, expected, names, tol=TOLERANCES[torch.float32]):
    for name, a, e in zip(names, actual, expected, strict=True):
        assert_verbose_allclose(a, e, *tol, name=name)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_rmsnorm_forward_and_backward_ops_trace_whole_and_match_reference():
    from lmfast.kernels.rmsnorm import rmsnorm

    x, w = torch.randn(3, 5, 40, generator=_gen(0)), 1 + 0.1 * torch.randn(40, generator=_gen(1))
    dy = torch.randn(3, 5, 40, generator=_gen(2))
    compiled = _traced_once(lambda x, w: rmsnorm(x, w) * 2.0, x, w)
    _close(_grads(compiled, (x, w), dy), _grads(lambda x, w: functional.rmsnorm(x, w) * 2.0, (x, w), dy),
           ("y", "dx", "dw"))

    _, rstd = torch.ops.lmfast.rmsnorm_fwd(x, w, 1e-5)
    backward = _traced_once(lambda dy, x, w, rstd: torch.ops.lmfast.rmsnorm_bwd(dy, x, w, rstd), dy, x, w, rstd)
    _close(backward(dy, x, w, rstd), _grads(functional.rmsnorm, (x, w), dy)[1:], ("dx", "dw"))


def test_add_rmsnorm_forward_and_backward_ops_trace_whole_and_match_reference():
    from lmfast.kernels.add_rmsnorm import add_rmsnorm

    x, r = torch.randn(3, 5, 40, generator=_gen(0)), torch.randn(3, 5, 40, generator=_gen(1))
    w, dy = 1 + 0.1 * torch.randn(40, generator=_gen(2)), torch.randn(3, 5, 40, generator=_gen(3))

    def step(fn):
        return lambda x, r, w: sum(t * 2.0 for t in fn(x, r, w))  # uses h and y both

    compiled = _traced_once(step(add_rmsnorm), x, r, w)
    _close(_grads(compiled, (x, r, w), dy), _grads(step(functional.add_rmsnorm), (x, r, w), dy),
           ("h + y", "dx", "dresidual", "dw"))

    h, _, rstd = torch.ops.lmfast.add_rmsnorm(x, r, w, 1e-5, None)
    backward = _traced_once(lambda dh, dy, h, rstd: torch.ops.lmfast.add_rmsnorm_bwd(
        dh, dy, h, w, rstd, torch.float32, torch.float32), dy, dy, h, rstd)
    dx, _, dw = backward(dy, dy, h, rstd)
    expected = _grads(step(functional.add_rmsnorm), (x, r, w), dy / 2.0)
    _close((dx, dw), (expected[1], expected[3]), ("dx", "dw"))


def test_rope_forward_and_backward_ops_trace_whole_and_match_reference():
    from lmfast.kernels.rope import rope

    q, k = torch.randn(2, 3, 7, 16, generator=_gen(0)), torch.randn(2, 3, 7, 16, generator=_gen(1))
    dq, dk = torch.randn(2, 3, 7, 16, generator=_gen(2)), torch.randn(2, 3, 7, 16, generator=_gen(3))
    cos, sin = functional.rope_cos_sin(10000.0, 16, torch.arange(7))

    def run(fn):
        qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
        q_out, k_out = fn(qq, kk)
        return (q_out, k_out, *torch.autograd.grad((q_out, k_out), (qq, kk), (dq, dk)))

    compiled = _traced_once(lambda q, k: rope(q, k, cos, sin), q, k)
    expected = run(lambda q, k: functional.rope(q, k, cos, sin))
    _close(run(compiled), expected, ("q_rot", "k_rot", "dq", "dk"))

    backward = _traced_once(lambda dq, dk: torch.ops.lmfast.rope_bwd(dq, dk, cos, sin), dq, dk)
    _close(backward(dq, dk), expected[2:], ("dq", "dk"))


def test_attention_forward_and_backward_ops_trace_whole_and_match_reference():
    from lmfast.kernels.attention import attention

    q, k, v = (torch.randn(1, 2, 40, 32, generator=_gen(i)) for i in range(3))
    grad = torch.randn(1, 2, 40, 32, generator=_gen(3))
    compiled = _traced_once(lambda q, k, v: attention(q * 2.0, k, v), q, k, v)
    expected = _grads(lambda q, k, v: functional.causal_attention(q * 2.0, k, v), (q, k, v), grad)
    _close(_grads(compiled, (q, k, v), grad), expected, ("out", "dq", "dk", "dv"))

    scale = 1 / 32**0.5
    out, lse = torch.ops.lmfast.attention(q, k, v, None, None, None, None, scale)
    backward = _traced_once(lambda g, q, k, v, o, lse: torch.ops.lmfast.attention_backward(
        g, q, k, v, o, lse, None, None, None, None, scale), grad, q, k, v, out, lse)
    expected = _grads(functional.causal_attention, (q, k, v), grad)[1:]
    _close(backward(grad, q, k, v, out, lse), expected, ("dq", "dk", "dv"))


def test_rope_attention_with_grouped_heads_and_documents_traces_whole_and_matches_reference():
    from lmfast.kernels.attention import rope_attention

    q = torch.randn(2, 4, 40, 32, generator=_gen(0))
    k, v = (torch.randn(2, 2, 40, 32, generator=_gen(i)) for i in (1, 2))
    grad = torch.randn(2, 4, 40, 32, generator=_gen(3))
    doc_ids = torch.tensor([[0] * 17 + [1] * 23, [4] * 40], dtype=torch.int32)
    positions = torch.stack([torch.cat([torch.arange(17), torch.arange(23)]), torch.arange(40)])
    cos, sin = functional.rope_cos_sin(10000.0, 32, positions)
    compiled = _traced_once(lambda q, k, v: rope_attention(q, k, v, cos, sin, doc_ids=doc_ids), q, k, v)

    def expected_fn(q, k, v):  # rope, then each document alone, K/V repeated per query head
        q, k = functional.rope(q, k, cos, sin)
        k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
        first = functional.causal_attention(q[:1, :, :17], k[:1, :, :17], v[:1, :, :17])
        second = functional.causal_attention(q[:1, :, 17:], k[:1, :, 17:], v[:1, :, 17:])
        return torch.cat([torch.cat([first, second], 2), functional.causal_attention(q[1:], k[1:], v[1:])])

    _close(_grads(compiled, (q, k, v), grad), _grads(expected_fn, (q, k, v), grad), ("out", "dq", "dk", "dv"))


def test_adamw_step_traces_whole_and_matches_reference():
    from lmfast.kernels.adamw import adamw_step

    shapes = [(4099,), (3, 7)]
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)

    def state(seed):
        gen = _gen(seed)
        return ([torch.randn(s, generator=gen) for s in shapes], [torch.randn(s, generator=gen) for s in shapes],
                [torch.zeros(s) for s in shapes], [torch.zeros(s) for s in shapes])

    def step(params, grads, ms, vs):
        adamw_step(params, grads, ms, vs, step=1, **hyper)

    fused, ref = state(0), state(0)
    _traced_once(step, *state(0))(*fused)
    adamw_step_reference(*ref, step=1, **hyper)
    for name, a, e in zip(("param", "exp_avg", "exp_avg_sq"), (fused[0], fused[2], fused[3]), (ref[0], ref[2], ref[3]),
                          strict=True):
        for i, (x, y) in enumerate(zip(a, e, strict=True)):
            assert_verbose_allclose(x, y, 1e-6, 1e-5, name=f"{name} {i}")


SIZES = dict(vocab_size=64, context_length=32, d_model=64, num_layers=2, num_heads=4, d_ff=96, rope_theta=10000.0)


def test_whole_fused_model_traces_as_one_graph_and_matches_the_reference_model(monkeypatch):
    # fp16, so that attention takes the kernel (the fused backend sends fp32 attention to SDPA, as on CUDA).
    from lmfast.model import TransformerLM

    force_fused_ops_on_cpu(monkeypatch)
    torch.manual_seed(0)
    reference = TransformerLM(**SIZES, backend="reference", dtype=torch.float16)
    fused = TransformerLM(**SIZES, backend="fused", dtype=torch.float16)
    fused.load_state_dict(reference.state_dict())
    assert fused.ops.name == "fused"
    tokens = torch.randint(0, SIZES["vocab_size"], (1, 12), generator=_gen(1))  # few rows: the interpreter is slow

    def loss_of(model):
        return lambda tokens: functional.cross_entropy(model(tokens), tokens.roll(-1, dims=1))

    compiled = _traced_once(loss_of(fused), tokens)
    losses, grads = [], []
    for model, fn in ((fused, compiled), (reference, loss_of(reference))):
        model.zero_grad(set_to_none=True)
        loss = fn(tokens)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.float() for n, p in model.named_parameters()})
    assert_verbose_allclose(losses[0], losses[1], 2e-3, 2e-3, name="loss")
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        scale = grads[1][name].abs().max().item()
        assert_verbose_allclose(grads[0][name], grads[1][name], 2e-2 * scale + 1e-4, 0.0, name=f"grad of {name}")
