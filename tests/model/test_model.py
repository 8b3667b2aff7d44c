"""lmfast.model against written-out formulas, float64 oracles, and Hugging Face's LlamaForCausalLM."""

from __future__ import annotations

import math

import pytest
import torch
from _kernel_utils import assert_verbose_allclose

from lmfast import functional
from lmfast.model import (
    Embedding,
    Linear,
    MultiHeadSelfAttention,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    TransformerBlock,
    TransformerLM,
)
from lmfast.model.hf import to_hf_state_dict

SHAPE = dict(vocab_size=97, context_length=24, d_model=64, num_layers=2, num_heads=4, d_ff=160, rope_theta=10000.0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _lm(**overrides) -> TransformerLM:
    return TransformerLM(**{**SHAPE, **overrides}, backend="reference")


def _rope_oracle(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Adjacent pairs of the last dim as complex numbers, times e^{i pos theta^(-2i/d)}, in float64."""
    d = x.shape[-1]
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    angles = positions.double().unsqueeze(-1) * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    return torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).reshape(x.shape)


# ---------------------------------------------------------------------------------------------- layers


def test_linear_init_is_truncated_normal_with_glorot_variance_and_no_bias():
    layer = Linear(384, 640)
    w = layer.weight.detach()
    std = math.sqrt(2.0 / (384 + 640))
    assert w.shape == (640, 384) and list(layer.state_dict()) == ["weight"]
    assert w.abs().max() <= 3 * std + 1e-7
    # a normal truncated at ±3σ has std 0.98658σ
    assert w.std().item() == pytest.approx(0.98658 * std, rel=0.02)
    assert abs(w.mean().item()) < 0.1 * std


def test_linear_computes_x_times_weight_transposed():
    layer, x = Linear(5, 3), torch.randn(2, 4, 5)
    assert_verbose_allclose(layer(x), x.double() @ layer.weight.double().T, 1e-6, 1e-6, "linear")


def test_embedding_init_is_truncated_standard_normal_and_lookup_picks_rows():
    emb = Embedding(1000, 96)
    w = emb.weight.detach()
    assert w.abs().max() <= 3.0 and list(emb.state_dict()) == ["weight"]
    assert w.std().item() == pytest.approx(0.98658, rel=0.02)
    ids = torch.tensor([[3, 999, 0], [3, 3, 7]])
    assert torch.equal(emb(ids), w[ids])


def test_layers_honour_device_and_dtype():
    assert Linear(4, 3, dtype=torch.float64).weight.dtype == torch.float64
    assert Embedding(4, 3, device="cpu", dtype=torch.bfloat16).weight.dtype == torch.bfloat16
    assert RMSNorm(8, dtype=torch.float64).weight.dtype == torch.float64


def test_rmsnorm_module_equals_the_functional_and_starts_as_identity_gain():
    norm = RMSNorm(32, eps=1e-6)
    assert torch.equal(norm.weight.detach(), torch.ones(32))
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 32)
    assert torch.equal(norm(x), functional.rmsnorm(x, norm.weight, 1e-6))


def test_rmsnorm_module_defaults_to_eps_1e_5_inside_the_root_as_llama():
    # small inputs, where eps matters: mean(x^2) ~ 1e-6
    x = torch.randn(3, 32, dtype=torch.float64) * 1e-3
    assert_verbose_allclose(RMSNorm(32)(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5), 1e-12, 1e-9,
                            "RMSNorm(32) on inputs of size 1e-3")
    layer = TransformerBlock(16, 2, 32, 8, 10000.0)
    assert layer.ln1.eps == layer.ln2.eps == _lm().ln_final.eps == 1e-5


def test_swiglu_matches_written_out_formula():
    ffn, x = SwiGLU(16, 40), torch.randn(2, 3, 16, dtype=torch.float64)
    w1, w2, w3 = (getattr(ffn, n).weight.double() for n in ("w1", "w2", "w3"))
    a = x @ w1.T
    ref = ((a * torch.sigmoid(a)) * (x @ w3.T)) @ w2.T
    assert_verbose_allclose(ffn(x.float()), ref, 1e-5, 1e-5, "swiglu")
    assert sorted(ffn.state_dict()) == ["w1.weight", "w2.weight", "w3.weight"]


def test_rotary_embedding_with_token_positions_matches_complex_rotation():
    rope = RotaryEmbedding(10000.0, 16, max_seq_len=64)
    x = torch.randn(3, 9, 16)
    positions = torch.tensor([0, 5, 6, 7, 20, 33, 40, 62, 63])
    assert_verbose_allclose(rope(x, positions), _rope_oracle(x, positions, 10000.0), 1e-5, 1e-5, "rope")
    assert len(rope.state_dict()) == 0  # cos/sin tables are not persistent


def test_rotary_embedding_with_batched_positions_rotates_each_row_by_its_own():
    rope = RotaryEmbedding(500.0, 8, max_seq_len=32)
    x = torch.randn(2, 5, 8)
    positions = torch.stack((torch.arange(5), torch.arange(20, 25)))
    out = rope(x, positions)
    assert_verbose_allclose(out, _rope_oracle(x, positions, 500.0), 1e-5, 1e-5, "rope batched")
    assert_verbose_allclose(out[1], rope(x[1], torch.arange(20, 25)), 1e-6, 1e-6, "row 1 alone")


def test_rotary_embedding_rejects_an_odd_head_dim():
    with pytest.raises(ValueError, match="even head dim"):
        RotaryEmbedding(10000.0, 7, 16)


def _attention_per_head_loop(attn: MultiHeadSelfAttention, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Multi-head causal attention written out head by head in float64."""
    x64, d_k, s = x.double(), attn.d_k, x.shape[1]
    heads = []
    for h in range(attn.num_heads):
        rows = slice(h * d_k, (h + 1) * d_k)
        q, k, v = (x64 @ getattr(attn, f"{n}_proj").weight.double()[rows].T for n in "qkv")
        if attn.rope is not None:
            q, k = _rope_oracle(q, positions, attn.rope.theta), _rope_oracle(k, positions, attn.rope.theta)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d_k)
        scores = scores.masked_fill(~torch.ones(s, s, dtype=torch.bool).tril(), float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v)
    return torch.cat(heads, dim=-1) @ attn.output_proj.weight.double().T


@pytest.mark.parametrize("theta", [None, 10000.0])
def test_multihead_self_attention_matches_per_head_loop(theta):
    attn = MultiHeadSelfAttention(32, 4, max_seq_len=16, theta=theta)
    x = torch.randn(2, 10, 32)
    ref = _attention_per_head_loop(attn, x, torch.arange(10))
    assert_verbose_allclose(attn(x), ref, 1e-5, 1e-5, f"attention theta={theta}")


def test_multihead_self_attention_uses_given_token_positions():
    attn = MultiHeadSelfAttention(32, 4, max_seq_len=64, theta=10000.0)
    x, positions = torch.randn(1, 6, 32), torch.arange(30, 36)
    assert_verbose_allclose(attn(x, positions), _attention_per_head_loop(attn, x, positions), 1e-5, 1e-5, "shifted")


def test_multihead_self_attention_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadSelfAttention(30, 4)
    with pytest.raises(ValueError, match="max_seq_len"):
        MultiHeadSelfAttention(32, 4, theta=10000.0)
    with pytest.raises(ValueError, match="even head dim"):
        MultiHeadSelfAttention(12, 4, max_seq_len=8, theta=10000.0)


def test_multihead_self_attention_rejects_a_sequence_longer_than_its_rope_tables():
    attn = MultiHeadSelfAttention(32, 4, max_seq_len=8, theta=10000.0)
    with pytest.raises(ValueError, match="max_seq_len=8"):
        attn(torch.randn(1, 9, 32))


def test_transformer_block_backward_passes_gradcheck_in_float64():
    block = TransformerBlock(8, 2, 12, max_seq_len=8, theta=10000.0, dtype=torch.float64)
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))


def test_model_norm_and_rope_path_weight_gradients_pass_gradcheck_in_float64():
    block = TransformerBlock(8, 2, 12, max_seq_len=8, theta=10000.0, dtype=torch.float64)
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    names = ["ln1.weight", "attn.q_proj.weight", "attn.k_proj.weight", "ln2.weight"]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in block.named_parameters() if n in names}
    assert len(params) == len(names)

    def f(*weights):
        return torch.func.functional_call(block, dict(zip(names, weights, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, tuple(params[n] for n in names))


# ---------------------------------------------------------------------------------------------- TransformerLM


def test_transformer_lm_state_dict_uses_cs336_names():
    model = _lm(num_layers=2)
    expected = ["token_embeddings.weight"]
    for i in range(2):
        expected += [f"layers.{i}.attn.{n}_proj.weight" for n in ("q", "k", "v", "output")]
        expected += [f"layers.{i}.ln1.weight", f"layers.{i}.ln2.weight"]
        expected += [f"layers.{i}.ffn.w{j}.weight" for j in (1, 2, 3)]
    expected += ["ln_final.weight", "lm_head.weight"]
    assert sorted(model.state_dict()) == sorted(expected)


def test_transformer_lm_parameter_count_matches_formula():
    v, d, n_layers, d_ff = SHAPE["vocab_size"], SHAPE["d_model"], SHAPE["num_layers"], SHAPE["d_ff"]
    per_layer = 4 * d * d + 3 * d * d_ff + 2 * d
    model = _lm()
    assert model.num_parameters() == 2 * v * d + n_layers * per_layer + d
    assert model.num_parameters(exclude_embeddings=True) == v * d + n_layers * per_layer + d


def test_transformer_lm_output_shape_and_dtype():
    logits = _lm()(torch.randint(0, 97, (3, 11)))
    assert logits.shape == (3, 11, 97) and logits.dtype == torch.float32


def _hf_llama_from(model: TransformerLM):
    """A transformers LlamaForCausalLM of the same shape holding ``model``'s weights."""
    import transformers  # a test dependency (pyproject's [test] extra): missing, this fails instead of skipping
    attn = model.layers[0].attn
    config = transformers.LlamaConfig(
        vocab_size=model.vocab_size, hidden_size=attn.d_model, intermediate_size=model.layers[0].ffn.w1.out_features,
        num_hidden_layers=len(model.layers), num_attention_heads=attn.num_heads, num_key_value_heads=attn.num_heads,
        max_position_embeddings=model.context_length, rms_norm_eps=1e-5, rope_theta=attn.rope.theta,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, attn_implementation="eager",
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    hf_sd = to_hf_state_dict(model.state_dict(), attn.num_heads)  # names, and q/k rows permuted for HF's RoPE
    missing, unexpected = hf.load_state_dict(hf_sd, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return hf


def test_transformer_lm_equals_hugging_face_llama_with_the_same_weights():
    model = _lm()
    with torch.no_grad():
        for norm in [model.ln_final] + [m for layer in model.layers for m in (layer.ln1, layer.ln2)]:
            norm.weight.uniform_(0.5, 1.5)  # non-trivial gains, so a swapped norm would show
    hf = _hf_llama_from(model)
    ids = torch.randint(0, SHAPE["vocab_size"], (2, SHAPE["context_length"]))
    with torch.no_grad():
        ours, theirs = model(ids), hf(input_ids=ids).logits
    assert_verbose_allclose(ours, theirs, 1e-4, 1e-4, "logits vs HF Llama")
    assert (ours - theirs).abs().max() < 1e-4


def test_transformer_lm_gradients_equal_hugging_face_llama():
    model = _lm(num_layers=1)
    hf = _hf_llama_from(model)
    ids, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    functional.cross_entropy(model(ids), targets).backward()
    torch.nn.functional.cross_entropy(hf(input_ids=ids).logits.flatten(0, 1), targets.flatten()).backward()
    pairs = [(model.token_embeddings.weight, hf.model.embed_tokens.weight),
             (model.layers[0].ffn.w1.weight, hf.model.layers[0].mlp.gate_proj.weight),
             (model.layers[0].attn.v_proj.weight, hf.model.layers[0].self_attn.v_proj.weight),
             (model.ln_final.weight, hf.model.norm.weight)]
    for i, (ours, theirs) in enumerate(pairs):
        assert_verbose_allclose(ours.grad, theirs.grad, 1e-5, 1e-4, f"grad {i}")


def test_changing_a_future_token_leaves_past_logits_unchanged():
    model = _lm()
    ids = torch.randint(0, 97, (1, 20))
    changed = ids.clone()
    changed[0, 12] = (ids[0, 12] + 1) % 97
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_kv_cache_incremental_decoding_equals_full_forward():
    model = _lm()
    ids = torch.randint(0, 97, (2, 15))
    with torch.no_grad():
        full = model(ids)
        caches = model.new_kv_caches(batch=2)
        chunks = [model(ids[:, :6], caches=caches)]  # prefill
        chunks.append(model(ids[:, 6:9], caches=caches))  # several new tokens at once after a prefix
        chunks += [model(ids[:, t:t + 1], caches=caches) for t in range(9, 15)]  # one token at a time
    assert caches[0].length == 15
    assert_verbose_allclose(torch.cat(chunks, dim=1), full, 1e-5, 1e-4, "cached vs full")


def test_last_only_gives_the_last_positions_logits_with_and_without_a_cache():
    model = _lm()
    ids = torch.randint(0, 97, (2, 15))
    with torch.no_grad():
        full = model(ids)
        last = model(ids, last_only=True)
        caches = model.new_kv_caches(batch=2)
        prefill = model(ids[:, :14], caches=caches, last_only=True)
        step = model(ids[:, 14:], caches=caches, last_only=True)
    assert last.shape == (2, 1, 97) and prefill.shape == (2, 1, 97)
    assert_verbose_allclose(last, full[:, -1:], 1e-6, 1e-5, "last only")
    assert_verbose_allclose(prefill, full[:, 13:14], 1e-5, 1e-4, "prefill's last")
    assert_verbose_allclose(step, full[:, 14:], 1e-5, 1e-4, "cached step")


def test_kv_cache_refuses_to_grow_past_its_capacity():
    model = _lm()
    caches = model.new_kv_caches(batch=1, max_len=4)
    with torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long), caches=caches)
        with pytest.raises(ValueError, match="KV cache holds 4 positions"):
            model(torch.zeros(1, 2, dtype=torch.long), caches=caches)


def test_transformer_lm_rejects_a_sequence_longer_than_context_length():
    model = _lm()
    with pytest.raises(ValueError, match="exceeds context_length=24"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_transformer_lm_rejects_d_model_not_divisible_by_num_heads_and_suggests_a_fix():
    with pytest.raises(ValueError, match=r"divisible by num_heads.*num_heads=\d+"):
        _lm(d_model=60, num_heads=7)


def test_transformer_lm_rejects_an_odd_head_dim():
    with pytest.raises(ValueError, match="even head dim"):
        _lm(d_model=60, num_heads=4)


def test_transformer_lm_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        TransformerLM(**SHAPE, backend="triton")


@pytest.mark.slow
def test_compiled_model_and_loss_match_eager_forward_and_backward():
    model = _lm(num_layers=1, vocab_size=64, d_model=32, d_ff=64)
    ids, targets = torch.randint(0, 64, (2, 12)), torch.randint(0, 64, (2, 12))

    def loss_and_grads(fn):
        model.zero_grad(set_to_none=True)
        loss = fn(ids, targets)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    eager = loss_and_grads(lambda a, b: functional.cross_entropy(model(a), b))
    compiled = loss_and_grads(torch.compile(lambda a, b: functional.cross_entropy(model(a), b), fullgraph=True))
    assert_verbose_allclose(compiled[0], eager[0], 1e-5, 1e-5, "loss")
    assert len(eager[1]) == 12
    for name, grad in eager[1].items():
        assert_verbose_allclose(compiled[1][name], grad, 1e-5, 1e-4, f"grad of {name}")
