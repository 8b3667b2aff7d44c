"""The trainer on documents: jsonl with packing and document masking, whole documents held out for validation, a
Hugging Face architecture (GQA, tied embeddings) trained and evaluated by ``python -m lmfast.eval``; every bad
document file or key is one ``error:`` line and exit code 2."""

from __future__ import annotations

import json

import pytest
import yaml

from lmfast import eval as eval_cli
from lmfast.tokenizer import Tokenizer, train_bpe
from lmfast.train import trainer as trainer_module

DOCS = [f"Story {i}. " + " ".join(["the cat", "a dog", "ran far", "sat down", "and then"][(i * j) % 5]
                                   for j in range(i % 9 + 4)) for i in range(120)]
RUN = dict(vocab_size=300, context_length=32, d_model=48, num_layers=2, num_heads=6, num_kv_heads=2, d_ff=96,
           tie_embeddings=True, batch_size=4, max_steps=6, warmup_iters=1, cosine_cycle_iters=6, log_interval=1,
           eval_iters=2, eval_interval=3, compile="false", progress=False, checkpoint_interval=0, dtype="float32",
           document_masking=True, val_data_path=None, val_split_fraction=0.2)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    (root / "text.txt").write_text("<|endoftext|>".join(DOCS))
    vocab, merges = train_bpe(str(root / "text.txt"), 300, ["<|endoftext|>"])
    return Tokenizer(vocab, merges, ["<|endoftext|>"]).save(root / "bpe")


@pytest.fixture
def docs_run(tmp_path, tokenizer_dir):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))

    def _run(*extra, **overrides):
        cfg = {**RUN, "train_data_path": str(tmp_path / "d.jsonl"), "tokenizer": str(tokenizer_dir),
               "checkpoint_dir": str(tmp_path / "ck"), "log_file": None, "cache_dir": str(tmp_path / "cache"),
               **overrides}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        return trainer_module.main(["--config", str(tmp_path / "c.yaml"), *extra])

    _run.dir = tmp_path
    return _run


def test_a_jsonl_run_with_packing_masking_and_a_held_out_split_trains_and_evaluates(docs_run, capsys):
    assert docs_run() == 0
    metrics = [json.loads(x) for x in (docs_run.dir / "ck" / "metrics.jsonl").read_text().splitlines()]
    assert [m["val_loss"] for m in metrics if "val_loss" in m]
    final = str(docs_run.dir / "ck" / "final_model.pt")
    capsys.readouterr()
    assert eval_cli.main(["--checkpoint", final, "--data", str(docs_run.dir / "d.jsonl"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["document_masking"] is True and 0 < result["loss"] < 10 and result["tokens"] > 500
    assert result["ppl"] == pytest.approx(2.718281828 ** result["loss"])


def test_eval_with_masking_equals_the_model_on_each_window_with_doc_ids(docs_run, capsys):
    import numpy as np
    import torch

    from lmfast.data import load_data
    from lmfast.model.functional import document_ids
    from lmfast.train.run_state import load_model

    assert docs_run(max_steps=2, eval_interval=0, val_split_fraction=0.0) == 0
    final = docs_run.dir / "ck" / "final_model.pt"
    model, tok, _ = load_model(final, "cpu", "reference")
    data = load_data(str(docs_run.dir / "d.jsonl"), key="k", tokenizer=tok, cache_dir=docs_run.dir / "cache",
                     context_length=32, eot_id=tok.eot_id)
    n = (len(data) - 1) // 32
    both = torch.from_numpy(np.stack([np.asarray(data[i * 32:i * 32 + 33], dtype=np.int64) for i in range(n)]))
    with torch.no_grad():
        want = float(model(both[:, :-1], targets=both[:, 1:], doc_ids=document_ids(both[:, :-1], tok.eot_id)))
    loss, tokens = eval_cli.evaluate_windows(model, data, 5, tok.eot_id)
    assert tokens == n * 32 and loss == pytest.approx(want, rel=1e-5)


def _last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and not any("Traceback" in line for line in err), err
    return err[-1]


@pytest.mark.parametrize("overrides, fragment", [
    (dict(num_kv_heads=4), "num_heads (6) must be divisible by num_kv_heads (4)"),
    (dict(rope_scaling={"type": "yarn", "factor": 4}), "rope_scaling: type 'yarn' is not implemented"),
    (dict(train_data_path=[{"path": "a.jsonl", "weight": 0}, {"path": "b.jsonl", "weight": 0}]),
     "the mixing weights sum to 0.0"),
    (dict(tokenizer=None), "document_masking: true splits windows at the end-of-text token"),
    (dict(text_field="body"), "d.jsonl:1: the record has no 'body' field"),
    (dict(eot_token="<|pad|>"), "eot_token '<|pad|>' is not a special token of the tokenizer"),
    (dict(val_split_fraction=0.2, val_data_path="x.txt"), "set val_data_path: null"),
])
def test_bad_document_keys_and_files_exit_2_with_one_line(docs_run, capsys, overrides, fragment):
    assert docs_run(**overrides) == 2
    assert fragment in _last_error(capsys)


def test_a_broken_jsonl_line_names_the_file_and_line(docs_run, capsys):
    (docs_run.dir / "d.jsonl").write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
    assert docs_run() == 2
    assert "d.jsonl:3: not JSON" in _last_error(capsys)


def test_eval_bad_input_is_one_line_and_exit_2(docs_run, capsys):
    assert eval_cli.main(["--checkpoint", str(docs_run.dir / "none.pt"), "--data", "x"]) == 2
    assert "does not exist" in _last_error(capsys)
    assert eval_cli.main(["--checkpoint", "x", "--data", "y", "--batch-size", "0"]) == 2
    assert "--batch-size and --max-windows must be >= 1" in _last_error(capsys)
    assert eval_cli.main(["--checkpoint"]) == 2
    assert "expected one argument" in _last_error(capsys)
