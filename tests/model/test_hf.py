"""lmfast.model.hf and lmfast.export's writer: Hugging Face Llama folders to and from TransformerLM — round trips,
folders transformers wrote, and one clear error for every folder or checkpoint lmfast cannot read.
End to end (training runs exported and loaded by transformers without lmfast): tests/cli/test_export.py."""

from __future__ import annotations

import json
import re

import pytest
import torch
from _kernel_utils import assert_verbose_allclose
from safetensors.torch import load_file, save_file

from lmfast import export
from lmfast.export import save_hf
from lmfast.model import TransformerLM
from lmfast.model.hf import (
    UnsupportedModelError,
    init_from_hf,
    rope_rows_from_hf,
    rope_rows_to_hf,
)

SHAPE = dict(vocab_size=97, context_length=24, d_model=64, num_layers=2, num_heads=4, d_ff=160, rope_theta=500.0)


def _lm(**overrides) -> TransformerLM:
    torch.manual_seed(0)
    model = TransformerLM(**{**SHAPE, **overrides}, backend="reference")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)  # non-trivial norm gains, so a swapped or dropped norm shows
    return model


def _equal_state(a: TransformerLM, b: TransformerLM) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb) and len(sa) == 3 + 9 * SHAPE["num_layers"]
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


@pytest.fixture
def folder(tmp_path):
    """A folder exported from a small lmfast model."""
    return save_hf(_lm(), tmp_path / "hf")


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_rope_rows_from_hf_undoes_rope_rows_to_hf_and_moves_pairs_to_halves():
    w = torch.arange(2 * 8 * 3, dtype=torch.float32).view(16, 3)  # 2 heads of d_k 8, 3 input features
    hf = rope_rows_to_hf(w, num_heads=2)
    assert torch.equal(rope_rows_from_hf(hf, num_heads=2), w)
    # head 1's adjacent pair (rows 8 + 2i, 8 + 2i + 1) lands on rows (8 + i, 8 + i + 4)
    assert torch.equal(hf[[8, 12, 9, 13]], w[[8, 9, 10, 11]])


def test_export_then_from_hf_gives_back_equal_weights(folder):
    back = TransformerLM.from_hf(folder, backend="reference")
    assert _equal_state(_lm(), back) == []
    assert back.ln_final.eps == 1e-5 and back.context_length == SHAPE["context_length"]


def test_a_bfloat16_export_reads_back_as_the_rounded_weights(tmp_path):
    model = _lm()
    back = TransformerLM.from_hf(save_hf(model, tmp_path / "bf16", dtype=torch.bfloat16), backend="reference")
    rounded = {k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()}
    assert all(torch.equal(back.state_dict()[k], v) for k, v in rounded.items())
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_from_hf_reads_a_folder_transformers_wrote_and_gives_its_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=24, rms_norm_eps=1e-6, rope_theta=500.0,
        tie_word_embeddings=True, attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path / "by_transformers")
    ours = TransformerLM.from_hf(tmp_path / "by_transformers", backend="reference")
    ids = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        assert_verbose_allclose(ours(ids), hf(input_ids=ids).logits, 1e-5, 1e-5, "logits vs transformers")
    assert ours.ln_final.eps == 1e-6  # rms_norm_eps honoured
    assert ours.lm_head.weight is ours.token_embeddings.weight  # tied: one matrix, as transformers keeps it


def test_from_hf_reads_sharded_safetensors(folder):
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:5], "model-00002-of-00002.safetensors": names[5:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, folder / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "model.safetensors").unlink()
    assert _equal_state(_lm(), TransformerLM.from_hf(folder, backend="reference")) == []


@pytest.mark.parametrize("changes, message", [
    (dict(num_key_value_heads=3), "num_key_value_heads=3 is not supported: it must divide num_attention_heads"),
    (dict(use_sliding_window=True), "use_sliding_window=true is not supported"),
    (dict(mlp_bias=True), "mlp_bias=true is not supported"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling=.*linear.* is not supported"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0}),
     "rope_parameters=.*llama3.* is not supported"),
    (dict(hidden_act="gelu"), 'hidden_act="gelu" is not supported'),
    (dict(model_type="mistral"), 'model_type="mistral" is not supported'),
    (dict(head_dim=15), "head_dim=15 is not supported"),
    (dict(attention_dropout=0.1), "attention_dropout=0.1 is not supported"),
    (dict(hidden_size=None), "lacks the integer field.*hidden_size"),
])
def test_an_unsupported_config_is_one_error_naming_the_field(folder, changes, message):
    _edit_config(folder, **changes)
    with pytest.raises(UnsupportedModelError, match=message):
        TransformerLM.from_hf(folder)


def test_missing_or_broken_files_are_clear_errors(folder):
    (folder / "model.safetensors").rename(folder / "elsewhere.safetensors")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        TransformerLM.from_hf(folder)
    tensors = load_file(folder / "elsewhere.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(UnsupportedModelError, match="missing model.layers.1.mlp.up_proj.weight"):
        TransformerLM.from_hf(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(UnsupportedModelError, match="config.json is not valid JSON"):
        TransformerLM.from_hf(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        TransformerLM.from_hf(folder)


def test_init_from_hf_loads_a_folder_of_the_same_shape_and_names_the_keys_that_differ(folder):
    model = TransformerLM(**SHAPE, backend="reference")
    init_from_hf(model, folder)
    assert _equal_state(_lm(), model) == []
    with pytest.raises(UnsupportedModelError, match=r"set d_model: 64 \(the config has 32\), d_ff: 160"):
        init_from_hf(TransformerLM(**{**SHAPE, "d_model": 32, "d_ff": 96}, backend="reference"), folder)
    _edit_config(folder, rms_norm_eps=1e-6)
    with pytest.raises(UnsupportedModelError, match=r"set rms_norm_eps: 1e-06 \(the config has 1e-05\)"):
        init_from_hf(model, folder)


def test_generation_config_carries_the_sampling_defaults_and_temperature_zero_is_greedy(tmp_path):
    sampled = json.loads((save_hf(_lm(), tmp_path / "s") / "generation_config.json").read_text())
    assert sampled["do_sample"] is True and sampled["temperature"] == 0.8 and sampled["top_p"] == 0.95
    greedy = json.loads((save_hf(_lm(), tmp_path / "g", temperature=0.0) / "generation_config.json").read_text())
    assert greedy["do_sample"] is False and "temperature" not in greedy and greedy["eos_token_id"] is None


def test_export_of_a_missing_or_foreign_checkpoint_is_one_clear_error(tmp_path, capsys):
    assert export.main(["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "out")]) == 2
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
    assert export.main(["--checkpoint", str(tmp_path / "foreign.pt"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err  # earlier tests may leave log handlers writing to stderr: read the error lines
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "does not exist" in errors[0] and "not a torch checkpoint" in errors[1]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- a Hugging Face tokenizer.json back into lmfast.Tokenizer --------------------------------------------------------

_TEXT = "To be, or not to be: that is the question. Ça va? 東京 🙂 <|endoftext|> Whether 'tis nobler\n" * 20


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A BPE trained on _TEXT with <|endoftext|> and one more special token."""
    from lmfast.tokenizer import Tokenizer, train_bpe

    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text(_TEXT, encoding="utf-8")
    specials = ["<|endoftext|>", "<|pad|>"]
    return Tokenizer(*train_bpe(path, 400, specials), specials)


def _hf_only_folder(tmp_path, document: dict):
    """A folder holding only ``tokenizer.json``, as an export or a hub download gives it."""
    d = tmp_path / "hf_tokenizer"
    d.mkdir(exist_ok=True)
    (d / "tokenizer.json").write_text(json.dumps(document), encoding="utf-8")
    return d


@pytest.mark.parametrize("writer", ["tokenizers", "documented format"])
def test_an_exported_tokenizer_json_loads_back_as_the_same_tokenizer(bpe, tmp_path, monkeypatch, writer):
    import sys

    from lmfast.tokenizer import Tokenizer
    from lmfast.tokenizer.hf_json import tokenizer_json

    if writer == "documented format":
        monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` raises ImportError
    back = Tokenizer.load(_hf_only_folder(tmp_path, json.loads(tokenizer_json(bpe))))
    assert (back.vocab, back.merges, back.special_tokens) == (bpe.vocab, bpe.merges, bpe.special_tokens)
    assert back.encode(_TEXT + "<|pad|>") == bpe.encode(_TEXT + "<|pad|>")


def test_merges_written_as_space_separated_strings_load_too(bpe, tmp_path):
    from lmfast.tokenizer import Tokenizer
    from lmfast.tokenizer.hf_json import tokenizer_json

    doc = json.loads(tokenizer_json(bpe))
    doc["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in doc["model"]["merges"]]
    assert Tokenizer.load(_hf_only_folder(tmp_path, doc)).merges == bpe.merges


def test_gpt2_exported_and_read_back_gives_tiktokens_ids(tmp_path):
    from _gpt2 import gpt2_tiktoken

    from lmfast.tokenizer import Tokenizer
    from lmfast.tokenizer.hf_json import tokenizer_json

    back = Tokenizer.load(_hf_only_folder(tmp_path, json.loads(tokenizer_json(Tokenizer.gpt2()))))
    text = _TEXT + "  spaces\tand 1234567 digits don't"
    assert back.encode(text) == gpt2_tiktoken().encode(text, allowed_special="all")


def test_the_trainer_takes_an_export_folder_as_its_tokenizer(bpe, tmp_path):
    from pathlib import Path

    from lmfast.train.config import TrainConfig
    from lmfast.train.run_setup import build_tokenizer

    folder = save_hf(_lm(vocab_size=len(bpe.vocab)), tmp_path / "hf", bpe)
    got = build_tokenizer(TrainConfig(tokenizer=str(folder)), Path("unused.txt"), tmp_path / "run")
    assert got.encode(_TEXT) == bpe.encode(_TEXT)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["model"].update(type="WordPiece"), "model.type"),
    (lambda d: d.update(normalizer={"type": "NFC"}), "normalizer"),
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "pre_tokenizer"),
    (lambda d: d.update(pre_tokenizer={"type": "Metaspace", "replacement": "▁"}), "pre_tokenizer"),
    (lambda d: d["model"].update(byte_fallback=True), "model.byte_fallback"),
    (lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\w+"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}), "none of lmfast's pre-tokenizers"),
    (lambda d: d["model"].update(dropout=0.1), "model.dropout"),
    (lambda d: d["added_tokens"][0].update(id=3), "added token '<|endoftext|>' has id 3"),
    (lambda d: d["model"]["vocab"].update({"Ġzzz": 3}), "gives id 3 to both"),
    (lambda d: d["model"].update(merges=[["Ġ", "t", "x"]]), "model.merges[0]"),
    (lambda d: d["model"]["vocab"].update({"\u4e00": 999}), "not in GPT-2's byte<->unicode map"),
    (lambda d: d["model"].update(vocab=[]), "no model.vocab"),
])
def test_a_tokenizer_json_lmfast_would_encode_differently_is_refused_naming_the_field(bpe, tmp_path, edit, field):
    from lmfast.tokenizer import Tokenizer
    from lmfast.tokenizer.hf_json import tokenizer_json

    doc = json.loads(tokenizer_json(bpe))
    edit(doc)
    with pytest.raises(ValueError, match=re.escape(field)):
        Tokenizer.load(_hf_only_folder(tmp_path, doc))
