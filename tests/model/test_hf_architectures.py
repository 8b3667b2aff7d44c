"""The architectures users bring from Hugging Face, held equal to transformers itself: grouped-query (4:1, 3:1) and
multi-query attention, tied embeddings, rms_norm_eps 1e-6, Llama-3.1 RoPE scaling, a head_dim that is not
d_model / num_heads, and Qwen2's q/k/v biases. Each model is built by transformers with random weights, saved, read by
``TransformerLM.from_hf``; logits and every gradient agree within fp32 tolerance, greedy continuations token for token,
and lmfast's export of it loads back in transformers with the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from _kernel_utils import assert_verbose_allclose

from lmfast.export import save_hf
from lmfast.model import TransformerLM
from lmfast.model.generation import generate_ids
from lmfast.model.hf import LlamaShape, read_llama_config, to_hf_state_dict

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=101, hidden_size=96, intermediate_size=160, num_hidden_layers=2, max_position_embeddings=48,
            rope_theta=500.0, attn_implementation="eager")
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
CASES = {
    "gqa_4_to_1": dict(num_attention_heads=8, num_key_value_heads=2),
    "gqa_3_to_1": dict(num_attention_heads=6, num_key_value_heads=2),
    "mqa": dict(num_attention_heads=4, num_key_value_heads=1),
    "tied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "eps_1e-6": dict(num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-6),
    "llama3_rope_scaling": dict(num_attention_heads=4, num_key_value_heads=2, rope_scaling=LLAMA3,
                                rope_theta=10000.0),
    "head_dim_32_of_d96": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32),
    "qwen2_biases": dict(num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True, kind="qwen2"),
}


def _hf_model(case: str):
    kw = {**BASE, **CASES[case]}
    kind = kw.pop("kind", "llama")
    torch.manual_seed(sum(map(ord, case)))
    if kind == "qwen2":
        config = transformers.Qwen2Config(**kw, use_sliding_window=False)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**kw)
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)  # a swapped or dropped norm shows
            elif name.endswith("bias"):
                p.normal_(0.0, 0.5)  # as do biases put on the wrong rows
    return model.eval()


@pytest.fixture(params=list(CASES))
def pair(request, tmp_path):
    """(case, transformers' model, lmfast's model read from the folder transformers saved)."""
    hf = _hf_model(request.param)
    hf.save_pretrained(tmp_path / "hf")
    return request.param, hf, TransformerLM.from_hf(tmp_path / "hf", backend="reference")


def test_logits_equal_transformers(pair):
    case, hf, ours = pair
    ids = torch.randint(0, 101, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_verbose_allclose(ours(ids), hf(input_ids=ids).logits, 2e-5, 1e-4, f"{case}: logits")


def test_every_gradient_equals_transformers(pair):
    case, hf, ours = pair
    ids = torch.randint(0, 101, (2, 40), generator=torch.Generator().manual_seed(4))
    loss_hf = hf(input_ids=ids[:, :-1]).logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).mean().neg()
    loss_ours = ours(ids[:, :-1], targets=ids[:, 1:])
    assert_verbose_allclose(loss_ours, loss_hf, 1e-5, 1e-5, f"{case}: loss")
    loss_hf.backward()
    loss_ours.backward()
    attn = ours.layers[0].attn
    grads = {k: p.grad for k, p in ours.named_parameters(remove_duplicate=False)}
    ours_as_hf = to_hf_state_dict(grads, attn.num_heads, attn.num_kv_heads, ours.tie_embeddings)
    theirs = {k: p.grad for k, p in hf.named_parameters()}
    assert set(ours_as_hf) == set(theirs)
    for name, g in theirs.items():
        assert_verbose_allclose(ours_as_hf[name], g, 1e-5, 1e-4, f"{case}: d {name}")


def test_a_greedy_continuation_equals_transformers_token_for_token(pair):
    case, hf, ours = pair
    prompt = [5, 17, 99, 3, 42]
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False, pad_token_id=0)[0, 5:].tolist()
    assert generate_ids(ours, prompt, 30, temperature=0.0) == theirs, case


def test_the_shape_read_from_the_folder_names_each_feature(pair):
    case, hf, ours = pair
    shape = LlamaShape.of(ours)
    cfg = hf.config
    assert shape.kv_heads == cfg.num_key_value_heads and shape.tie_embeddings == cfg.tie_word_embeddings
    assert ours.ln_final.eps == cfg.rms_norm_eps
    assert shape.attention_bias == (case == "qwen2_biases")
    assert (shape.rope_scaling is not None) == (case == "llama3_rope_scaling")
    if shape.tie_embeddings:  # one tensor under both names, as transformers keeps it
        assert ours.lm_head.weight is ours.token_embeddings.weight
    assert len(ours.new_kv_caches(1, 8)[0].k[0]) == cfg.num_key_value_heads  # the cache stores kv heads only


def test_lmfasts_export_of_it_loads_in_transformers_with_equal_logits_and_the_same_config(pair, tmp_path):
    case, hf, ours = pair
    source = read_llama_config(tmp_path / "hf").source
    out = save_hf(ours, tmp_path / "export", source=source)
    back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = torch.randint(0, 101, (1, 48), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert_verbose_allclose(back(input_ids=ids).logits, hf(input_ids=ids).logits, 2e-5, 1e-4, f"{case}: export")
    written = json.loads((out / "config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "max_position_embeddings", "tie_word_embeddings", "model_type",
                "num_key_value_heads"):
        assert written.get(key) == source.get(key), key
    if ours.tie_embeddings:  # tied weights are written once, as tied
        from safetensors.torch import load_file

        assert "lm_head.weight" not in load_file(out / "model.safetensors")
