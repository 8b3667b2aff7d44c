"""python -m lmfast.export end to end: runs trained with each kind of tokenizer are exported, then loaded by
transformers in a process where lmfast cannot be imported; its ids, text and logits equal lmfast's on the default
corpus. And ``python -m lmfast.train --init-from`` starts from such a folder."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from _kernel_utils import assert_verbose_allclose

from lmfast import export
from lmfast.data.corpus import shakespeare
from lmfast.generate import load_model
from lmfast.model import TransformerLM
from lmfast.train import trainer as trainer_module

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # three tiny training runs and a transformers process: ~15 s on 2 cores

KINDS = {"train": dict(tokenizer="train", vocab_size=320), "bytes": dict(tokenizer=None, vocab_size=256),
         "gpt2": dict(tokenizer="gpt2", vocab_size=50257)}
RUN = dict(context_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=64, batch_size=2, max_steps=2,
           warmup_iters=1, val_data_path=None, checkpoint_interval=0, log_interval=1, log_file=None,
           compile="false", progress=False, device="cpu")

# Runs with lmfast blocked from import: what a user without lmfast gets from the exported folders.
_WITHOUT_LMFAST = r"""
import importlib.abc, json, sys

class _NoLmfast(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "lmfast" or name.startswith("lmfast."):
            raise ImportError(f"{name} is blocked in this process")
        return None

sys.meta_path.insert(0, _NoLmfast())
try:
    import lmfast  # noqa: F401
    raise SystemExit("lmfast is importable, so this check proves nothing")
except ImportError:
    pass
import torch, transformers

out = {}
for kind, job in json.load(open(sys.argv[1])).items():
    model = transformers.AutoModelForCausalLM.from_pretrained(job["dir"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(job["dir"])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([job["ids"][:job["window"]]])).logits[0]
        greedy = model.generate(**tok("ROMEO:", return_tensors="pt"), max_new_tokens=5, do_sample=False)[0]
    out[kind] = {"model_class": type(model).__name__, "ids": tok(job["text"])["input_ids"],
                 "text": tok.decode(job["ids"]), "logits": logits, "eos": tok.eos_token_id,
                 "generation_eos": model.generation_config.eos_token_id, "greedy": greedy.tolist()}
torch.save(out, sys.argv[2])
"""


@functools.lru_cache(maxsize=1)
def _text() -> str:
    """Real text: the default corpus's validation split, with an end-of-text marker inside."""
    val = shakespeare()[1].read_text(encoding="utf-8")
    return val[:20_000] + "<|endoftext|>" + val[20_000:22_000]


def _config(tmp: Path, kind: str, **overrides) -> Path:
    cfg = {**RUN, **KINDS[kind], "train_data_path": str(tmp / "train.txt"), "checkpoint_dir": str(tmp / kind),
           "cache_dir": str(tmp / "cache"), **overrides}
    path = tmp / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@dataclass
class Exported:
    """One run trained with a kind of tokenizer, its export, and what transformers made of the folder."""

    checkpoint: Path
    folder: Path
    model: TransformerLM
    tokenizer: object
    ids: list[int]  # lmfast's ids of _text()
    seen: dict | None = None  # transformers' results, from the process without lmfast


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Exported]:
    tmp = tmp_path_factory.mktemp("export")
    (tmp / "train.txt").write_text(shakespeare()[0].read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    runs, text = {}, _text()
    for kind in KINDS:
        assert trainer_module.main(["--config", str(_config(tmp, kind))]) == 0
        ckpt, out = tmp / kind / "final_model.pt", tmp / f"{kind}-hf"
        assert export.main(["--checkpoint", str(ckpt), "--out", str(out)]) == 0
        model, tokenizer, _ = load_model(ckpt)
        runs[kind] = Exported(ckpt, out, model, tokenizer, tokenizer.encode(text))
    jobs = {k: {"dir": str(r.folder), "text": text, "ids": r.ids, "window": RUN["context_length"]}
            for k, r in runs.items()}
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_LMFAST, str(tmp / "jobs.json"), str(tmp / "out.pt")],
                          cwd=tmp, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for kind, seen in torch.load(tmp / "out.pt", weights_only=True).items():
        runs[kind].seen = seen
    runs["tmp"] = tmp
    return runs


def test_the_folder_holds_the_hugging_face_files(exported):
    names = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}
    for kind in KINDS:
        assert {p.name for p in exported[kind].folder.iterdir()} == names, kind
        assert exported[kind].seen["model_class"] == "LlamaForCausalLM"


@pytest.mark.parametrize("kind", list(KINDS))
def test_transformers_logits_equal_lmfasts_on_real_text(exported, kind):
    run = exported[kind]
    ids = torch.tensor([run.ids[:RUN["context_length"]]])
    assert ids.shape[1] == RUN["context_length"]
    with torch.no_grad():
        ours = run.model(ids)[0]
    assert_verbose_allclose(run.seen["logits"], ours, 1e-5, 1e-5, f"{kind}: logits of transformers vs lmfast")


@pytest.mark.parametrize("kind", list(KINDS))
def test_autotokenizer_gives_lmfasts_ids_and_text(exported, kind):
    run = exported[kind]
    assert len(run.ids) > 1000
    assert run.seen["ids"] == run.ids
    assert run.seen["text"] == _text()


@pytest.mark.parametrize("kind", list(KINDS))
def test_transformers_greedy_generation_continues_as_lmfasts_argmax(exported, kind):
    run = exported[kind]
    ids = run.tokenizer.encode("ROMEO:")
    with torch.no_grad():
        for _ in range(5):
            ids.append(int(run.model(torch.tensor([ids]))[0, -1].argmax()))
    assert run.seen["greedy"] == ids


def test_a_byte_level_model_exports_ids_equal_to_the_raw_bytes(exported):
    assert exported["bytes"].seen["ids"] == list(_text().encode("utf-8"))
    assert exported["bytes"].seen["eos"] is None


def test_end_of_text_is_the_eos_of_tokenizer_and_generation_config(exported):
    gpt2, trained = exported["gpt2"].seen, exported["train"].seen
    assert gpt2["eos"] == gpt2["generation_eos"] == 50256
    assert trained["eos"] == trained["generation_eos"] == 0  # a trained BPE puts the special tokens first


@pytest.mark.parametrize("kind", ["train", "bytes"])
def test_tokenizer_json_written_without_the_tokenizers_library_gives_the_same_ids(exported, monkeypatch, kind):
    import tokenizers

    from lmfast.tokenizer.hf_json import tokenizer_json

    run = exported[kind]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` raises ImportError
        written = tokenizer_json(run.tokenizer)
    hf = tokenizers.Tokenizer.from_str(written)
    assert hf.encode(_text()).ids == run.ids
    assert hf.decode(run.ids, skip_special_tokens=False) == _text()


def test_train_init_from_starts_from_the_folders_weights(exported):
    tmp, run = exported["tmp"], exported["bytes"]
    cfg = _config(tmp, "bytes", checkpoint_dir=str(tmp / "init"))
    trainer = trainer_module.build(["--config", str(cfg), "--init-from", str(run.folder)])
    mine, theirs = trainer.model.state_dict(), run.model.state_dict()
    assert sorted(mine) == sorted(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.parametrize("change, message", [
    ({"--set": "d_model=64"}, "the config disagrees with it: d_model: 64 (the folder has 32)"),
    ({"num_key_value_heads": 3}, "num_key_value_heads=3 is not supported"),
    ({"delete": "model.safetensors"}, "no model.safetensors"),
])
def test_train_init_from_an_unusable_folder_exits_2_with_one_line(exported, tmp_path, capsys, change, message):
    tmp = exported["tmp"]
    folder = shutil.copytree(exported["bytes"].folder, tmp_path / "folder")
    args = ["--config", str(_config(tmp_path, "bytes", cache_dir=str(tmp / "cache"),
                                    train_data_path=str(tmp / "train.txt"))), "--init-from", str(folder)]
    if "--set" in change:
        args += ["--set", change["--set"]]
    elif "delete" in change:
        (folder / change["delete"]).unlink()
    else:
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, **change}))
    capsys.readouterr()
    assert trainer_module.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1] and not any("Traceback" in e for e in err)
