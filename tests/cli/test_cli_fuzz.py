"""Fuzzing the command lines: whatever the config document, ``--set`` values or arguments, ``train``, ``tokenize``,
``generate`` and ``eval`` exit with 0 or 2, and 2 comes with an error line, never a traceback.

The entry points are called in-process (``main(argv)``), so an exception that escapes is the failure hypothesis
shrinks. Training itself is not what is fuzzed: ``Trainer.fit`` returns at once, and the device is said to have
256 MiB free, so every config the trainer accepts is also small enough to build in a moment. Path values stay
relative to a scratch directory, and corpus names and ``gpt2`` (which download) are left out.
"""

import dataclasses
import json
import math
import os
import string

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lmfast import eval as eval_cli
from lmfast import generate, tokenize
from lmfast.train import memory as _memory
from lmfast.train import trainer as trainer_module
from lmfast.train.config import TrainConfig

TINY = dict(vocab_size=300, context_length=16, d_model=32, num_layers=1, num_heads=2, d_ff=64, batch_size=4,
            max_steps=2, warmup_iters=1, cosine_cycle_iters=2, eval_iters=1, compile="false", progress=False,
            device="cpu", train_data_path="train.txt", val_data_path=None, checkpoint_dir="ck", log_file=None,
            cache_dir="cache")
KEYS = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "wandb_project"]  # W&B would go online
PATH_KEYS = {"train_data_path", "val_data_path", "checkpoint_dir", "log_file", "cache_dir", "tokenizer"}
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A directory of inputs good and bad, with a tiny trained checkpoint for generate."""
    d = tmp_path_factory.mktemp("fuzz")
    words = "to be or not to be that is the question whether tis nobler in the mind to suffer".split()
    rng = np.random.default_rng(0)
    (d / "train.txt").write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(60)) + "\n")
    (d / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    (d / "empty.txt").write_text("")
    (d / "a-dir").mkdir()
    (d / "garbage.pt").write_bytes(b"not a checkpoint")
    (d / "docs.jsonl").write_text("".join(json.dumps({"text": " ".join(rng.choice(words, 30))}) + "\n"
                                          for _ in range(20)))
    (d / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken}\n')
    (d / "nofield.jsonl").write_text('{"body": "x"}\n')
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": ["to be or not"] * 40, "n": list(range(40))}), d / "docs.parquet")
    except ImportError:
        (d / "docs.parquet").write_bytes(b"pyarrow missing: not parquet")
    (d / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    (d / "checkpoint.yaml").write_text(yaml.safe_dump({**TINY, "checkpoint_dir": "gen-ck", "max_steps": 1}))
    cwd = os.getcwd()
    os.chdir(d)
    try:
        assert trainer_module.main(["--config", "checkpoint.yaml"]) == 0
        assert tokenize.main(["train", "--input", "train.txt", "--vocab-size", "300", "--out", "tok",
                              "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    return d


@pytest.fixture
def cli(scratch, monkeypatch, capsys):
    """``cli(main, argv)`` runs an entry point in the scratch directory and checks the exit code and stderr."""
    monkeypatch.chdir(scratch)
    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda self, signals=None: {
        "step": 0, "train_loss": 0.0, "best_val_loss": math.inf, "final": "ck/final_model.pt", "stopped_by": None})
    monkeypatch.setattr(_memory, "available_memory", lambda device: 256 << 20)

    def _cli(main, argv):
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: --help exits 0; generate's own parser exits 2 on a bad flag
            code = e.code
        err = capsys.readouterr().err
        event(f"exit code {code}")  # --hypothesis-show-statistics shows how many examples got how far
        assert code in (0, 2), f"exit code {code}: {err[-2000:]}"
        assert "Traceback" not in err, err[-2000:]
        if code == 2:
            assert "error: " in err.strip().splitlines()[-1], err[-2000:]
        return code

    return _cli


# ---------------------------------------------------------------------------------------------------------------
# Strategies

_SAFE = string.ascii_letters + string.digits + "._- é日"
_CORPORA_AND_DOWNLOADS = {"shakespeare", "tinystories", "gpt2"}

_HOSTILE_PATHS = ["a-dir", "a-dir/", "missing.txt", "missing.npy", "train.txt/x", "", "x" * 300, "a\0b", "日本/x"]
new_paths = st.one_of(  # places that may be written: never an input the other examples read
    st.sampled_from(_HOSTILE_PATHS + ["out", "out.npy", "garbage.pt"]),
    st.text(alphabet=_SAFE, min_size=1, max_size=12).filter(
        lambda s: s.strip().lower() not in _CORPORA_AND_DOWNLOADS and s.strip() not in ("", ".", "..")),
)
_INPUTS = ["train.txt", "latin1.txt", "empty.txt", "tok", "tiny.yaml", "docs.jsonl", "bad.jsonl", "nofield.jsonl",
           "docs.parquet", "*.jsonl", "a-dir"]
paths = st.one_of(new_paths, st.sampled_from(_INPUTS))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=4), inner, max_size=2)),
                      max_leaves=4)
sizes = st.one_of(st.integers(-3, 64), st.integers(2**20, 2**70))  # small enough to build, or absurd
weights = st.one_of(st.none(), st.floats(), st.integers(-2, 5), st.text(max_size=3))
source_lists = st.lists(st.one_of(paths, st.fixed_dictionaries({"path": paths, "weight": weights}), values),
                        max_size=3)
rope_scalings = st.one_of(st.none(), values, st.fixed_dictionaries(
    {"type": st.sampled_from(["llama3", "yarn", "linear", ""]), "factor": st.one_of(st.floats(), st.integers(0, 9)),
     "low_freq_factor": st.floats(0, 5), "high_freq_factor": st.floats(0, 5),
     "original_max_position_embeddings": st.one_of(st.integers(-1, 64), st.floats())}))


def _plausible(f: dataclasses.Field) -> st.SearchStrategy:
    """Values of a key's own type, mostly in range, so that many fuzzed configs are accepted and get built."""
    kind = str(f.type)
    if "choices" in f.metadata:
        return st.sampled_from(f.metadata["choices"])
    if kind.startswith("int"):
        return st.integers(0, 64)
    if kind.startswith("float"):
        return st.floats(0, 2)
    if kind == "bool":
        return st.booleans()
    if kind.startswith("tuple"):
        return st.lists(st.floats(0, 1, exclude_max=True), min_size=2, max_size=2)
    if kind.startswith("list"):
        return st.lists(st.text(min_size=1, max_size=8), max_size=3)
    return st.text(max_size=12)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


@st.composite
def config_values(draw):
    key = draw(st.sampled_from(KEYS))
    if key in ("train_data_path", "val_data_path"):
        return key, draw(st.one_of(st.none(), paths, source_lists))
    if key == "tokenizer":
        return key, draw(st.one_of(st.none(), paths, st.just("train")))
    if key == "rope_scaling":
        return key, draw(rope_scalings)
    if key in PATH_KEYS:
        return key, draw(st.one_of(st.none(), new_paths))
    if key == "device":
        return key, draw(st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:7", "cuda:abc", "cuda:-1", "mps", ""]))
    hostile = st.one_of(sizes, values) if key in ("vocab_size", "context_length", "d_model", "num_layers",
                                                   "num_heads", "num_kv_heads", "head_dim", "d_ff",
                                                   "batch_size") else values
    return key, draw(st.one_of(_plausible(_FIELDS[key]), _plausible(_FIELDS[key]), hostile))


@st.composite
def config_documents(draw):
    """A YAML document: the tiny config with a few keys changed (and maybe an unknown one), or arbitrary bytes."""
    kind = draw(st.sampled_from(["mutated", "mutated", "text", "bytes"]))
    if kind == "text":
        return draw(st.text(max_size=80)).encode("utf-8", "surrogatepass")
    if kind == "bytes":
        return draw(st.binary(max_size=80))
    doc = dict(TINY)
    for key, value in draw(st.lists(config_values(), min_size=1, max_size=3)):
        doc[key] = value
    if draw(st.integers(0, 3)) == 0:
        doc[draw(st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12))] = draw(values)
    return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")


@st.composite
def set_pairs(draw):
    """``key=value`` strings for --set: a known key with YAML text, or a junk key (never a path key's name)."""
    key, value = draw(config_values())
    dumped = st.just("" if value is None else yaml.safe_dump(value, default_flow_style=True).strip())
    text = draw(dumped if key in PATH_KEYS else st.one_of(dumped, st.text(max_size=15)))
    junk = draw(st.text(alphabet=string.printable, max_size=10).filter(lambda k: k.strip() not in PATH_KEYS))
    return draw(st.sampled_from([f"{key}={text}"] * 4 + [f"{junk}={text}", junk, f"={text}"]))


# ---------------------------------------------------------------------------------------------------------------
# train

_TRAIN_WORDS = ["--config", "--device", "--resume", "--set", "--help", "--bogus", "-", "--", "tiny.yaml", "auto", "cpu",
                "cuda:x", "gen-ck/final_model.pt", "garbage.pt", "a-dir", "seed=1", "max_steps=[1"]


@settings(FUZZ, max_examples=80)
@given(document=config_documents())
def test_train_on_any_config_document_exits_0_or_2_without_a_traceback(cli, scratch, document):
    (scratch / "fuzz.yaml").write_bytes(document)
    cli(trainer_module.main, ["--config", "fuzz.yaml"])


@settings(FUZZ, max_examples=80)
@given(pairs=st.lists(set_pairs(), min_size=1, max_size=3), grouped=st.booleans())
def test_train_on_any_set_values_exits_0_or_2_without_a_traceback(cli, pairs, grouped):
    args = ["--set", *pairs] if grouped else [a for p in pairs for a in ("--set", p)]
    cli(trainer_module.main, ["--config", "tiny.yaml", *args])


@settings(FUZZ, max_examples=50)
@given(argv=st.lists(st.one_of(st.sampled_from(_TRAIN_WORDS), st.text(alphabet=_SAFE, max_size=8)), max_size=6))
def test_train_on_any_arguments_exits_0_or_2_without_a_traceback(cli, argv):
    if "--config" not in argv:
        argv = ["--config", "tiny.yaml", *argv]
    cli(trainer_module.main, argv)


# ---------------------------------------------------------------------------------------------------------------
# tokenize

_TOKENIZE_FLAGS = {
    "--input": paths, "--out": new_paths, "--tokenizer": paths,
    "--vocab-size": st.one_of(st.integers(-5, 400).map(str), st.integers(2**31, 2**80).map(str), st.text(max_size=5)),
    "--special-token": st.text(max_size=6), "--workers": sizes.map(str), "--threads": sizes.map(str),
    "--backend": st.sampled_from(["auto", "native", "python", "cuda", ""]), "--no-progress": st.none(),
}


_TOKENIZE_BASE = {
    "train": ["train", "--input", "train.txt", "--vocab-size", "300", "--out", "out", "--no-progress"],
    "encode": ["encode", "--tokenizer", "tok", "--input", "train.txt", "--out", "out.npy", "--no-progress"],
}


@st.composite
def tokenize_argv(draw):
    """A working command line with a few flags changed or added, or a junk subcommand."""
    command = draw(st.sampled_from(["train", "train", "encode", "encode", "decode", "", "--help"]))
    argv = list(_TOKENIZE_BASE.get(command, [command]))
    for flag in draw(st.lists(st.sampled_from(sorted(_TOKENIZE_FLAGS)), max_size=3)):
        value = draw(_TOKENIZE_FLAGS[flag])
        if value is None:
            argv.append(flag)
        elif flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


@settings(FUZZ, max_examples=80)
@given(argv=tokenize_argv())
def test_tokenize_on_any_arguments_exits_0_or_2_without_a_traceback(cli, argv):
    cli(tokenize.main, argv)


# ---------------------------------------------------------------------------------------------------------------
# generate (its flags are lmfast.generate's; this holds its command line to the same rule)

_GENERATE_FLAGS = {
    "--checkpoint": st.sampled_from(["gen-ck/final_model.pt", "garbage.pt", "a-dir", "missing.pt", "train.txt", ""]),
    "--prompt": st.one_of(st.text(max_size=10), st.just(""), st.just("\udcff")),
    # Sizes stay small: a huge --max-new-tokens or --num-samples is valid, and generation slides past the window.
    "--max-new-tokens": st.one_of(st.integers(-3, 8).map(str), st.sampled_from(["x", "1e3", ""])),
    "--num-samples": st.one_of(st.integers(-2, 3).map(str), st.sampled_from(["x", ""])),
    "--top-k": st.one_of(st.integers(-2, 2**70).map(str), st.just("x")),
    "--stop": st.text(max_size=4),
    "--window-keep": st.one_of(st.integers(-2, 64).map(str), st.integers(2**31, 2**70).map(str)),
    "--backend": st.sampled_from(["auto", "reference", "fused", "x"]),
    "--temperature": st.sampled_from(["0", "0.8", "nan", "inf", "-1", "1e309", "x"]),
    "--top-p": st.sampled_from(["0.9", "1", "0", "nan", "2"]),
    "--seed": st.one_of(st.integers(-5, 5).map(str), st.integers(2**63, 2**80).map(str)),
    "--device": st.sampled_from(["cpu", "cuda", "cuda:abc", "mps", "tpu"]),
}


@settings(FUZZ, max_examples=50)
@given(flags=st.dictionaries(st.sampled_from(sorted(_GENERATE_FLAGS)), st.just(None), max_size=5), data=st.data())
def test_generate_on_any_arguments_exits_0_or_2_without_a_traceback(cli, flags, data):
    argv = ["--checkpoint", "gen-ck/final_model.pt", "--max-new-tokens", "4"]
    for flag in flags:
        argv += [flag, data.draw(_GENERATE_FLAGS[flag])]
    cli(generate.main, argv)


# ---------------------------------------------------------------------------------------------------------------
# eval

_EVAL_FLAGS = {
    "--checkpoint": st.sampled_from(["gen-ck/final_model.pt", "garbage.pt", "a-dir", "missing.pt", "train.txt", ""]),
    "--data": st.sampled_from([*_INPUTS, "missing.jsonl", "", "*.nothing"]),
    "--batch-size": st.one_of(st.integers(-2, 9).map(str), st.sampled_from(["x", "", "1e3"])),
    "--max-windows": st.one_of(st.integers(-2, 5).map(str), st.just("x")),
    "--text-field": st.sampled_from(["text", "body", "", "n"]),
    "--dtype": st.sampled_from(["auto", "float32", "bfloat16", "float16", "x"]),
    "--backend": st.sampled_from(["auto", "reference", "fused", "x"]),
    "--device": st.sampled_from(["cpu", "cuda", "cuda:abc", "mps", "tpu"]),
    "--json": st.none(),
}


@settings(FUZZ, max_examples=50)
@given(flags=st.dictionaries(st.sampled_from(sorted(_EVAL_FLAGS)), st.just(None), max_size=4), data=st.data())
def test_eval_on_any_arguments_exits_0_or_2_without_a_traceback(cli, flags, data):
    argv = ["--checkpoint", "gen-ck/final_model.pt", "--data", "train.txt", "--max-windows", "2"]
    for flag in flags:
        value = data.draw(_EVAL_FLAGS[flag])
        argv += [flag] if value is None else [flag, value]
    cli(eval_cli.main, argv)
