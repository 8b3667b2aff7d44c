"""A Hugging Face model goes --init-from -> 20 training steps -> python -m lmfast.export -> transformers, with equal
logits: SmolLM-135M's shape (d 576, 30 layers, 9 heads over 3 key/value heads, tied embeddings, vocab 49152, eps
1e-5, bos/eos 0, 2048 positions) under the slow marker, and a small model of the same family in the fast suite."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from lmfast.export import export_checkpoint
from lmfast.train import trainer as trainer_module
from lmfast.train.run_state import load_model

transformers = pytest.importorskip("transformers")

SMOLLM_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rms_norm_eps=1e-5,
                   rope_theta=10000.0, max_position_embeddings=2048, bos_token_id=0, eos_token_id=0)
SMALL = {**SMOLLM_135M, "vocab_size": 512, "hidden_size": 72, "intermediate_size": 192, "num_hidden_layers": 3}


def _round_trip(tmp_path, shape: dict) -> None:
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape)).eval()
    hf.save_pretrained(tmp_path / "smol")
    (tmp_path / "train.txt").write_bytes(np.random.default_rng(0).integers(32, 127, 20_000, dtype=np.uint8).tobytes())
    cfg = dict(train_data_path=str(tmp_path / "train.txt"), val_data_path=None, context_length=16, batch_size=1,
               max_steps=20, warmup_iters=2, cosine_cycle_iters=20, max_learning_rate=1e-3, checkpoint_interval=0,
               compile="false", progress=False, dtype="float32", log_file=None, checkpoint_dir=str(tmp_path / "ck"),
               cache_dir=str(tmp_path / "cache"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert trainer_module.main(["--config", str(tmp_path / "c.yaml"), "--init-from", str(tmp_path / "smol")]) == 0
    final = tmp_path / "ck" / "final_model.pt"
    ours, _, _ = load_model(final, "cpu", "reference")
    assert ours.tie_embeddings and ours.layers[0].attn.num_kv_heads == 3
    started = dict(hf.named_parameters())["model.layers.0.self_attn.k_proj.weight"]
    assert ours.layers[0].attn.k_proj.weight.shape == started.shape
    out = export_checkpoint(final, tmp_path / "export")
    written = json.loads((out / "config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "max_position_embeddings", "num_key_value_heads",
                "tie_word_embeddings", "vocab_size"):
        assert written[key] == shape[key], key
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert sum(p.numel() for p in back.parameters()) == ours.num_parameters()  # tied: one matrix, not two
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, mine = back(input_ids=ids).logits, ours(ids)
        before = hf(input_ids=ids).logits
    torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(before, mine, atol=1e-3)  # the 20 steps changed the model


def test_a_small_smollm_family_model_survives_init_from_training_and_export(tmp_path):
    _round_trip(tmp_path, SMALL)


@pytest.mark.slow
def test_smollm_135m_shape_survives_init_from_twenty_steps_and_export(tmp_path):
    _round_trip(tmp_path, SMOLLM_135M)
