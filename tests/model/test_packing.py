"""Packed windows and recomputed activations: document masking makes a window of several documents give each
document the logits and gradients it gets alone, and activation checkpointing changes memory, never the numbers."""

from __future__ import annotations

import pytest
import torch
from _kernel_utils import assert_verbose_allclose

from lmfast.model import TransformerLM
from lmfast.model.functional import document_ids

SHAPE = dict(vocab_size=50, context_length=32, d_model=48, num_layers=3, num_heads=6, d_ff=96, rope_theta=1000.0)
EOT = 0


def _model(**kw) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(**{**SHAPE, **kw}, backend="reference")


@pytest.mark.parametrize("kw", [{}, {"num_kv_heads": 2, "tie_embeddings": True, "attention_bias": True}])
def test_a_packed_window_gives_each_document_the_logits_it_gets_alone(kw):
    model = _model(**kw)
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(1, 50, (n,), generator=g) for n in (5, 9, 1, 12)]
    docs = [torch.cat([d, torch.tensor([EOT])]) for d in docs]  # each ends with its end-of-text token
    window = torch.cat(docs)[None]
    doc_ids = document_ids(window, EOT)
    packed = model(window, doc_ids=doc_ids)
    alone = torch.cat([model(d[None]) for d in docs], dim=1)
    assert_verbose_allclose(packed, alone, 1e-5, 1e-5, "packed vs each document alone")
    unmasked = model(window)
    assert not torch.allclose(unmasked[:, 6:], alone[:, 6:], atol=1e-3)  # without the mask, documents leak


def test_a_packed_windows_gradients_equal_the_sum_over_documents_alone():
    model = _model(num_kv_heads=3)
    g = torch.Generator().manual_seed(2)
    docs = [torch.cat([torch.randint(1, 50, (n,), generator=g), torch.tensor([EOT])]) for n in (7, 3, 10)]
    window = torch.cat(docs)
    targets = torch.randint(1, 50, window.shape, generator=g)
    n = len(window)
    loss = model(window[None], targets=targets[None], doc_ids=document_ids(window[None], EOT)) * n
    packed = torch.autograd.grad(loss, list(model.parameters()))
    start, total = 0, 0
    for d in docs:
        total = total + model(d[None], targets=targets[None, start:start + len(d)]) * len(d)
        start += len(d)
    alone = torch.autograd.grad(total, list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), packed, alone, strict=True):
        assert_verbose_allclose(a, b, 1e-5, 1e-4, f"d {name}")


@pytest.mark.parametrize("mode, every, recomputed", [("full", 2, {0, 1, 2}), ("selective", 2, {0, 2}),
                                                     ("selective", 3, {0})])
def test_activation_checkpointing_keeps_loss_and_gradients_and_picks_its_blocks(mode, every, recomputed):
    x = torch.randint(0, 50, (2, 32), generator=torch.Generator().manual_seed(3))
    plain = _model(num_kv_heads=2)
    model = _model(num_kv_heads=2)
    model.set_activation_checkpointing(mode, every)
    assert model.checkpointed_layers == recomputed
    doc_ids = document_ids(x, 7)
    losses = [m(x[:, :-1], targets=x[:, 1:], doc_ids=doc_ids[:, :-1]) for m in (plain, model)]
    assert torch.equal(losses[0], losses[1])
    grads = [torch.autograd.grad(loss, list(m.parameters())) for loss, m in zip(losses, (plain, model), strict=True)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_activation_checkpointing_under_torch_compile_gives_the_eager_loss_and_gradients():
    x = torch.randint(0, 50, (2, 17), generator=torch.Generator().manual_seed(4))
    eager = _model()
    model = _model()
    model.set_activation_checkpointing("full")
    compiled = torch.compile(model, backend="aot_eager")
    losses = [eager(x[:, :-1], targets=x[:, 1:]), compiled(x[:, :-1], targets=x[:, 1:])]
    assert_verbose_allclose(losses[1], losses[0], 1e-6, 1e-5, "compiled + checkpointed loss")
    for a, b in zip(torch.autograd.grad(losses[0], list(eager.parameters())),
                    torch.autograd.grad(losses[1], list(model.parameters())), strict=True):
        assert_verbose_allclose(b, a, 1e-6, 1e-4, "compiled + checkpointed grad")


def test_an_unknown_activation_checkpointing_mode_is_refused():
    with pytest.raises(ValueError, match="none, full or selective"):
        _model().set_activation_checkpointing("some")
