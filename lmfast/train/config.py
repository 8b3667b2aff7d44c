"""One validated schema for a training run: YAML in, a frozen-after-validation dataclass out.

Every key of the CS336 training script's ``config_simple.yaml`` is accepted exactly as written; the rest add
what a user expects of a trainer. Unknown keys name the closest valid key; bad values name the key and
what is allowed. ``--set key=value`` overrides any key from the command line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmfast.train.config_values import DATA_KEYS, ConfigError, _short, _to_float, _to_int, data_sources, rope_scaling

__all__ = ["TrainConfig", "ConfigError", "load_config", "parse_overrides", "config_table", "closest_keys"]


_INT64_MAX = 2**63 - 1  # every int key ends up in torch / numpy as a C int64 (seeds, sizes, step counts)


def _f(default, help: str, **rules):
    """A schema field: its default, a one-line why, and validation rules (min, max, choices, gt)."""
    metadata = {"help": help, **rules}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    # Model architecture (the seed's keys)
    vocab_size: int = _f(10000, "vocabulary size; token ids must be below it", min=2)
    context_length: int = _f(256, "tokens per training sequence (and the RoPE table length)", min=1)
    d_model: int = _f(512, "model width", min=2)
    num_layers: int = _f(4, "number of transformer blocks", min=1)
    num_heads: int = _f(16, "attention heads; d_model must be divisible by it", min=1)
    d_ff: int = _f(1344, "SwiGLU hidden size (≈ 8/3 · d_model, a multiple of 64)", min=1)
    rope_theta: float = _f(10000.0, "RoPE base frequency", gt=0)
    num_kv_heads: int | None = _f(None, "key/value heads: grouped-query attention (1 = multi-query); null = num_heads; "
                                  "num_heads must be divisible by it", min=1)
    head_dim: int | None = _f(None, "width of each head; null = d_model / num_heads (set it for a model whose heads "
                              "are not d_model / num_heads wide)", min=2)
    tie_embeddings: bool = _f(False, "the LM head is the token embedding matrix (one tensor, as SmolLM, Llama-3.2 "
                              "1B/3B and Qwen2-0.5B have)")
    rms_norm_eps: float = _f(1e-5, "RMSNorm epsilon (Hugging Face's LlamaConfig default is 1e-6)", gt=0)
    rope_scaling: dict | None = _f(None, "null = plain RoPE; {type: llama3, factor: 8, low_freq_factor: 1, "
                                   "high_freq_factor: 4, original_max_position_embeddings: 8192} = Llama-3.1's "
                                   "frequency scaling")
    attention_bias: bool = _f(False, "biases on the q/k/v projections (Qwen2); the output projection has none")
    # Training (the seed's keys)
    num_epochs: float = _f(1.0, "passes over the training tokens (fractions allowed); ignored when max_steps is set",
                           gt=0)
    batch_size: int = _f(32, "sequences per micro-batch", min=1)
    learning_rate: float = _f(1e-4, "constant learning rate, used when use_lr_schedule is false", min=0)
    grad_clip_norm: float = _f(1.0, "global L2 gradient-norm clip; 0 turns clipping off", min=0)
    # Learning-rate schedule (the seed's keys)
    use_lr_schedule: bool = _f(True, "linear warmup then cosine decay (else a constant learning_rate)")
    max_learning_rate: float = _f(1e-3, "peak learning rate after warmup", min=0)
    min_learning_rate: float = _f(1e-5, "floor the cosine decays to and stays at", min=0)
    warmup_iters: int = _f(1000, "optimizer steps of linear warmup from 0", min=0)
    cosine_cycle_iters: int = _f(10000, "optimizer step at which the cosine reaches the floor", min=0)
    # Data (the seed's keys)
    train_data_path: str | list = _f("data/train.txt", "training tokens (.npy/.npz/.bin); text (.txt), documents "
                                     "(.jsonl, .jsonl.gz, .jsonl.zst, .parquet), a directory or glob of them; a corpus "
                                     "name: shakespeare, tinystories; or a list of sources with mixing weights "
                                     "[{path: a, weight: 3}, {path: b, weight: 1}]")
    val_data_path: str | list | None = _f("data/val.txt", "validation data in the same forms; null turns validation "
                                          "off (with a corpus name as train_data_path, its validation split is used)")
    text_field: str = _f("text", "the field of each .jsonl record, or the .parquet column, that holds a document's "
                         "text")
    eot_token: str | None = _f(None, "the special token written after each document; null = the tokenizer's "
                               "<|endoftext|> (none for byte-level tokens)")
    val_split_fraction: float = _f(0.0, "hold out this fraction of the training documents (whole documents, chosen by "
                                   "seed) for validation, with val_data_path: null; 0 = none", min=0, lt=1)
    document_masking: bool = _f(False, "attention never crosses an end-of-text token inside a training window, and "
                                "RoPE positions restart at each document")
    # Checkpointing and logging (the seed's keys)
    checkpoint_dir: str = _f("checkpoints", "where checkpoints, metrics.jsonl, config.yaml, the log and the run's "
                             "tokenizer go")
    checkpoint_interval: int = _f(10, "save checkpoint_epoch_{e}.pt every this many epochs; 0 = never", min=0)
    log_level: str = _f("INFO", "console and file log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_file: str | None = _f("training.log", "log file, inside checkpoint_dir unless the path is absolute (appended "
                              "to); null = console only")
    log_interval: int = _f(100, "log training loss every this many optimizer steps", min=1)
    # What a trainer needs beyond the seed
    max_steps: int | None = _f(None, "train for this many optimizer steps instead of num_epochs", min=1)
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step", min=1)
    checkpoint_steps: int = _f(0, "also save checkpoint_step_{s}.pt every this many steps; 0 = never", min=0)
    keep_last: int = _f(0, "keep only the newest this many checkpoint_step_{s}.pt files; 0 = keep all (best, final, "
                        "epoch and interrupted checkpoints are never deleted)", min=0)
    eval_interval: int = _f(0, "validate every this many steps as well as at each epoch end; 0 = epoch ends only",
                            min=0)
    eval_iters: int = _f(20, "validation batches per evaluation", min=1)
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay", min=0)
    betas: tuple[float, float] = _f((0.9, 0.95), "AdamW (beta1, beta2), each in [0, 1)")
    eps: float = _f(1e-8, "AdamW epsilon", min=0)
    seed: int = _f(1337, "seed for weights, batch sampling and dropout-free determinism", min=0, max=_INT64_MAX)
    device: str = _f("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    dtype: str = _f("auto", "autocast dtype: auto (bfloat16 on CUDA and on CPUs that multiply bf16 natively, i.e. "
                    "AMX; float32 elsewhere), float32, bfloat16, float16",
                    choices=("auto", "float32", "bfloat16", "float16"))
    compile: str = _f("auto", "torch.compile the model: auto (on for CUDA), true, false",
                      choices=("auto", "true", "false"))
    backend: str = _f("auto", "ops backend: auto (on CUDA, per op as lmfast/model/fused_table.json says), "
                      "reference, fused",
                      choices=("auto", "reference", "fused"))
    distributed: str = _f("ddp", "under torchrun: ddp (every rank holds the whole model) or fsdp (FSDP2 shards "
                          "parameters, gradients and optimizer state over the ranks; sharded checkpoints)",
                          choices=("ddp", "fsdp"))
    activation_checkpointing: str = _f("none", "recompute block activations in backward instead of keeping them: "
                                       "none, full (every block), selective (every activation_checkpointing_every-th "
                                       "block)", choices=("none", "full", "selective"))
    activation_checkpointing_every: int = _f(2, "with selective: checkpoint blocks 0, k, 2k, ...", min=1)
    fused_loss: bool = _f(True, "loss from hidden states and the LM head in chunks, never the full logits "
                          "(memory-lean); false = full logits, then cross-entropy")
    tokenizer: str | None = _f(None, "null = byte-level (vocab 256); train = BPE of vocab_size trained on the "
                               "training text; gpt2; or a directory with vocab.json + merges.txt, or with a "
                               "byte-level BPE tokenizer.json (a lmfast.export folder)")
    special_tokens: list[str] = _f(["<|endoftext|>"], "special tokens of a trained BPE tokenizer")
    cache_dir: str | None = _f(None, "where tokenized text is cached; null = the user cache (~/.cache/lmfast)")
    sample_prompt: str | None = _f(None, "after training, print a sample continuing this prompt; null = no sample")
    sample_tokens: int = _f(200, "tokens to generate for the end-of-training sample", min=1)
    sample_temperature: float = _f(0.8, "sampling temperature for that sample", min=0)
    sample_top_p: float = _f(0.95, "nucleus (top-p) mass for that sample", gt=0, max=1)
    tensorboard: bool = _f(False, "also log to TensorBoard under checkpoint_dir/tensorboard")
    wandb_project: str | None = _f(None, "also log to this Weights & Biases project")
    progress: bool = _f(True, "show a progress bar over training steps")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f, getattr(self, f.name)))
        self._check_cross_field()

    def _check_cross_field(self) -> None:
        self._check_heads()
        if self.min_learning_rate > self.max_learning_rate:
            raise ConfigError(f"min_learning_rate ({self.min_learning_rate}) must be <= max_learning_rate "
                              f"({self.max_learning_rate})")
        if self.use_lr_schedule and self.cosine_cycle_iters < self.warmup_iters:
            raise ConfigError(f"cosine_cycle_iters ({self.cosine_cycle_iters}) must be >= warmup_iters "
                              f"({self.warmup_iters})")
        if self.tokenizer is None and self.vocab_size < 256 and _is_text(self.train_data_path):
            raise ConfigError(f"byte-level tokens (tokenizer: null) need vocab_size >= 256, got {self.vocab_size}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:[0-9]+", self.device)):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps (N: a GPU index, 0, 1, ...), got "
                              f"{_short(self.device)}")

        if self.val_split_fraction > 0 and self.val_data_path is not None:
            raise ConfigError(f"val_split_fraction ({self.val_split_fraction}) holds validation documents out of the "
                              f"training data, but val_data_path is also set ({_short(self.val_data_path)}); set "
                              "val_data_path: null, or val_split_fraction: 0")

    def _check_heads(self) -> None:
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            ok = ", ".join(str(k) for k in range(1, self.num_heads + 1) if self.num_heads % k == 0)
            raise ConfigError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads}): "
                              f"each key/value head serves a whole group of query heads; num_kv_heads that work: {ok}")
        if self.head_dim is not None:
            if self.head_dim % 2:
                raise ConfigError(f"head_dim ({self.head_dim}) must be even for RoPE; use {self.head_dim + 1}, or "
                                  "null for d_model / num_heads")
            return
        if self.d_model % 2:
            raise ConfigError(f"d_model ({self.d_model}) is odd, so no num_heads gives the even head dim "
                              f"(d_model / num_heads) that RoPE needs; use an even d_model such as "
                              f"{self.d_model + 1}")
        if self.d_model % self.num_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads}); "
                              f"num_heads that work for this d_model: {_head_counts(self.d_model)}")
        if (self.d_model // self.num_heads) % 2:
            raise ConfigError(f"RoPE needs an even head dim, but d_model / num_heads = {self.d_model // self.num_heads}"
                              "; change d_model or num_heads")

    def model_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :class:`lmfast.model.TransformerLM` for this config's model."""
        keys = ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff", "rope_theta",
                "num_kv_heads", "head_dim", "tie_embeddings", "rms_norm_eps", "rope_scaling", "attention_bias")
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def _head_counts(d_model: int, limit: int = 256) -> str:
    """The num_heads up to ``limit`` that split an even ``d_model`` into even head dims (d_model may be huge)."""
    ok = [h for h in range(1, min(d_model, limit) + 1) if d_model % h == 0 and (d_model // h) % 2 == 0]
    return ", ".join(map(str, ok))


def _is_text(path: str | list | None) -> bool:
    """Whether any source of a data key is text or documents (tokenized by the run's tokenizer)."""
    paths = [s["path"] for s in path] if isinstance(path, list) else [] if path is None else [path]
    return any(Path(p).suffix in (".txt", ".jsonl", ".gz", ".zst", ".parquet") for p in paths)


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Convert ``value`` to the field's type and check its rules; YAML 1.1 reads ``1e-4`` as a string."""
    name, kind, rules = f.name, str(f.type), f.metadata
    optional = "None" in kind
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} cannot be null: {rules['help']}")
    if name in DATA_KEYS:
        return data_sources(name, value)
    if kind.startswith("dict"):
        return rope_scaling(value)
    try:
        if kind.startswith("int"):
            value = _to_int(value)
            rules = {"max": _INT64_MAX, **rules}
        elif kind.startswith("float"):
            value = _to_float(value)
        elif kind == "bool":
            value = _to_bool(value)
        elif kind.startswith("tuple"):
            parts = value.split(",") if isinstance(value, str) else list(value)
            value = tuple(_to_float(v) for v in parts)
            if len(value) != 2 or not all(0.0 <= b < 1.0 for b in value):
                raise ValueError
        elif kind.startswith("list"):
            if not isinstance(value, (str, list, tuple)):
                raise ValueError
            value = [value] if isinstance(value, str) else [_to_str(v) for v in value]
            if not all(value):
                raise ValueError
        elif name == "compile":  # YAML reads `compile: true` as a bool
            value = _to_str(value).lower()
        else:
            value = _to_str(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf), from `.inf` or `1e999`
        expected = _expected(kind, rules)
        raise ConfigError(f"{name}: cannot use {_short(value)}; expected {expected} ({rules['help']})") from None
    _check_rules(name, value, rules, kind)
    return value


def _to_str(value: Any) -> str:
    """A scalar as text; a mapping or list where text is expected is an error, not its repr."""
    if value is None or isinstance(value, (dict, list, tuple, set, bytes)):
        raise ValueError
    return str(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError


def _expected(kind: str, rules: dict) -> str:
    if "choices" in rules:
        return "one of " + ", ".join(rules["choices"])
    for word in ("int", "float", "bool", "tuple", "list"):
        if kind.startswith(word):
            return {"int": "an integer", "float": "a number", "bool": "true or false",
                    "tuple": "two numbers in [0, 1), e.g. [0.9, 0.95]",
                    "list": "a list of non-empty strings"}[word]
    return "a string"


def _check_rules(name: str, value: Any, rules: dict, kind: str) -> None:
    if "choices" in rules and value not in rules["choices"]:
        raise ConfigError(f"{name}: {value!r} is not allowed; choose one of {', '.join(map(str, rules['choices']))}")
    if "min" in rules and value < rules["min"]:
        raise ConfigError(f"{name}: {_short(value)} is too small; it must be >= {rules['min']} ({rules['help']})")
    if "gt" in rules and value <= rules["gt"]:
        raise ConfigError(f"{name}: {_short(value)} is too small; it must be > {rules['gt']} ({rules['help']})")
    if "lt" in rules and value >= rules["lt"]:
        raise ConfigError(f"{name}: {_short(value)} is too large; it must be < {rules['lt']} ({rules['help']})")
    if "max" in rules and value > rules["max"]:
        raise ConfigError(f"{name}: {_short(value)} is too large; it must be <= {rules['max']} ({rules['help']})")


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _check_keys(raw: dict, source: str) -> None:
    for key in raw:
        if key not in _FIELDS:
            close = closest_keys(str(key))
            hint = f"did you mean {' or '.join(', '.join(map(repr, close)).rsplit(', ', 1))}? " if close else ""
            raise ConfigError(f"unknown config key {_short(key)} in {source}; {hint}(python -m lmfast.train --help "
                              "lists every key, --print-config their values)")


def closest_keys(key: str, n: int = 3) -> list[str]:
    """Up to ``n`` config keys a typo or an abbreviation most likely means: keys whose word initials are it (``lr``:
    learning_rate) or hold it (max_learning_rate), then the closest spellings, then keys that contain it."""
    key, names = key.lower(), list(_FIELDS)
    initials = {name: "".join(word[0] for word in name.split("_")) for name in names}
    by_initials = [k for k in names if initials[k] == key] + [k for k in names if len(key) > 1 and
                                                              key in initials[k] and initials[k] != key]
    spelled = difflib.get_close_matches(key, names, n=n, cutoff=0.5)
    within = [k for k in names if len(key) > 2 and key in k]
    return list(dict.fromkeys(by_initials + spelled + within))[:n]


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` from ``--set`` into a dict; values are read as YAML (``1e-3``, ``true``, ``[a, b]``)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {_short(pair)}")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {_short(pair)}: the value of {_short(key.strip())} is not valid YAML "
                              f"({_yaml_problem(e)}); quote a string value (--set 'key=\"text\"') or write a list "
                              "in full: [a, b]") from None
    return out


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error in one line: the problem and where it is (its message spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None, fixed: dict[str, Any] | None = None,
                fixed_by: str = "") -> TrainConfig:
    """Read a YAML file (or nothing: the defaults), apply ``overrides``, validate, return a :class:`TrainConfig`.

    ``fixed``: keys another source decides (``--init-from``'s folder: the architecture, named by ``fixed_by``). They
    fill in what the file and overrides leave out; a key they set to another value is a ConfigError naming each one.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(path)!r} must be a mapping of key: value, got {type(raw).__name__}")
        _check_keys(raw, repr(str(path)))
    overrides = overrides or {}
    _check_keys(overrides, "--set")
    given = {**raw, **overrides}
    if fixed:
        _check_agrees(given, fixed, fixed_by)
    return TrainConfig(**{**given, **(fixed or {})})


def _check_agrees(given: dict[str, Any], fixed: dict[str, Any], fixed_by: str) -> None:
    """Every key the user gave that ``fixed`` decides must hold the same value (null num_kv_heads / head_dim read as
    the plain ones)."""
    def plain(key: str, values: dict) -> Any:
        if key == "num_kv_heads" and values.get(key) is None:
            return values.get("num_heads")
        if key == "head_dim" and values.get(key) is None and values.get("num_heads"):
            return values["d_model"] // values["num_heads"]
        return values.get(key)

    mine = {k: _coerce(_FIELDS[k], v) for k, v in given.items() if k in fixed}
    wrong = []
    for key in mine:
        a, b = plain(key, {**fixed, **mine}), plain(key, fixed)
        if a != b and not (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-9)):
            wrong.append(f"{key}: {_short(mine[key])} (the folder has {_short(fixed[key])})")
    if wrong:
        raise ConfigError(f"{fixed_by} gives the model's architecture, and the config disagrees with it: "
                          f"{'; '.join(wrong)}; remove these keys from the config and --set (the folder's values are "
                          "taken), or start from another folder")


def _read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; every way the file can be unusable is a ConfigError naming it."""
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a directory; pass a YAML file, e.g. configs/quickstart.yaml")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; see configs/ for ready ones")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e.strerror or e}") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {_yaml_problem(e)}") from None


def config_table() -> str:
    """The schema as a Markdown table (key, default, meaning): the README's config reference."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        rows.append(f"| `{f.name}` | `{shown}` | {f.metadata['help']} |")
    return "\n".join(rows)
