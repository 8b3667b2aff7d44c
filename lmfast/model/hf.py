"""Hugging Face Llama and Qwen2 folders: lmfast's weights and shape to and from ``LlamaForCausalLM``'s layout.

A folder is ``config.json`` + ``model.safetensors`` (or ``model.safetensors.index.json`` and its shards).
Tensor names map one to one (``layers.{i}.attn.q_proj.weight`` <-> ``model.layers.{i}.self_attn.q_proj.weight``,
``ffn.w1/w3/w2`` <-> ``mlp.gate_proj/up_proj/down_proj``, ``ln1/ln2`` <-> ``input_layernorm`` /
``post_attention_layernorm``, ...). One thing differs beyond names: lmfast's RoPE rotates adjacent pairs
``(x[2i], x[2i+1])`` of each head (Meta's original Llama layout) while HF's rotates halves ``(x[i], x[i+d_k/2])``.
Permuting each head's q and k rows (row 2i -> i, row 2i+1 -> i + d_k/2, as transformers'
``convert_llama_weights_to_hf.py`` does; the q/k biases alike) gives the same attention: scores are sums over the
same pairs, and v and o are untouched.

What lmfast reads (anything else is an :class:`UnsupportedModelError` naming the field): ``model_type`` llama or
qwen2 (Qwen2's q/k/v biases; no sliding window); ``num_key_value_heads`` dividing ``num_attention_heads``
(grouped-query and multi-query attention); ``head_dim`` even (any width); ``attention_bias`` (q/k/v biases; an
``o_proj`` bias is not read); no MLP bias; ``hidden_act`` silu; RoPE plain or ``llama3``-scaled;
``attention_dropout`` 0; ``rms_norm_eps`` and ``tie_word_embeddings`` as given (a tied model keeps one matrix).
An export writes every field of the folder it started from (``bos_token_id``, ``eos_token_id``,
``max_position_embeddings`` ... as that config gives them), the shape from the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from lmfast.model.weights import load_model_state

__all__ = ["UnsupportedModelError", "LlamaShape", "read_llama_config", "llama_config", "rope_rows_to_hf",
           "rope_rows_from_hf", "to_hf_state_dict", "from_hf_state_dict", "read_safetensors", "load_weights",
           "init_from_hf"]

LMFAST_RMS_NORM_EPS = 1e-5  # RMSNorm's default: what TransformerLM builds unless told otherwise

_PER_LAYER = {  # lmfast name under layers.{i}. -> HF name under model.layers.{i}.
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.output_proj.weight": "self_attn.o_proj.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
    "ln1.weight": "input_layernorm.weight",
    "ln2.weight": "post_attention_layernorm.weight",
}
_BIASES = {f"attn.{p}_proj.bias": f"self_attn.{p}_proj.bias" for p in "qkv"}
_TOP = {"token_embeddings.weight": "model.embed_tokens.weight", "ln_final.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight"}
_ROPE_ROWS = {"attn.q_proj.weight": "q", "attn.k_proj.weight": "k", "attn.q_proj.bias": "q", "attn.k_proj.bias": "k"}
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_LLAMA3 = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


class UnsupportedModelError(ValueError):
    """A Hugging Face folder lmfast cannot read; the message names the field, its value and what is allowed."""


# ---------------------------------------------------------------------------------------------------------------
# Shape: config.json <-> TransformerLM's arguments


@dataclass(frozen=True)
class LlamaShape:
    """What lmfast needs of a Llama config: TransformerLM's keyword arguments (the same-named config keys), and
    the folder's whole ``config.json`` when it came from one (``source``, which an export writes back)."""

    vocab_size: int
    context_length: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    rope_theta: float
    rms_norm_eps: float = LMFAST_RMS_NORM_EPS
    tie_embeddings: bool = False
    num_kv_heads: int | None = None
    head_dim: int | None = None
    rope_scaling: dict | None = None
    attention_bias: bool = False
    model_type: str = "llama"
    source: dict | None = field(default=None, compare=False, repr=False)

    @property
    def tie_word_embeddings(self) -> bool:
        return self.tie_embeddings

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def width(self) -> int:
        """The per-head width: ``head_dim``, or d_model / num_heads."""
        return self.head_dim or self.d_model // self.num_heads

    def model_kwargs(self) -> dict:
        """The keyword arguments of :class:`TransformerLM` (and the same-named config keys)."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        del kw["model_type"], kw["source"]
        return kw

    def train_keys(self) -> dict:
        """The training config's model keys this folder fixes (all of model_kwargs but context_length, which RoPE
        leaves free); ``num_kv_heads`` / ``head_dim`` null where they are the plain ones."""
        kw = self.model_kwargs()
        del kw["context_length"]
        kw["num_kv_heads"] = None if self.kv_heads == self.num_heads else self.kv_heads
        kw["head_dim"] = None if self.width * self.num_heads == self.d_model else self.width
        return kw

    @classmethod
    def of(cls, model: torch.nn.Module) -> LlamaShape:
        """The shape of a :class:`~lmfast.model.TransformerLM`."""
        attn = model.layers[0].attn
        plain_width = attn.d_k * attn.num_heads == attn.d_model
        return cls(model.vocab_size, model.context_length, attn.d_model, len(model.layers), attn.num_heads,
                   model.layers[0].ffn.w1.out_features, attn.rope.theta, model.ln_final.eps,
                   bool(getattr(model, "tie_embeddings", False)),
                   None if attn.num_kv_heads == attn.num_heads else attn.num_kv_heads,
                   None if plain_width else attn.d_k, attn.rope.scaling, attn.q_proj.bias is not None)


def _unsupported(path: Path, field: str, value, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{path}: {field}={json.dumps(value)} is not supported: {why}")


def read_llama_config(directory: str | Path) -> LlamaShape:
    """Read and check ``directory/config.json``; raises :class:`UnsupportedModelError` naming an unsupported field."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a Hugging Face model folder (config.json + "
                                "model.safetensors), e.g. one written by python -m lmfast.export")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnsupportedModelError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise UnsupportedModelError(f"{path} holds {type(cfg).__name__}, not a JSON object of model settings")
    _check_supported(path, cfg)
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads", "max_position_embeddings") if not _is_int(cfg.get(k))]
    if missing:
        raise UnsupportedModelError(f"{path} lacks the integer field(s) {', '.join(missing)} that a Llama config has")
    heads, d_model = cfg["num_attention_heads"], cfg["hidden_size"]
    kv = cfg.get("num_key_value_heads") or heads
    if not _is_int(kv) or kv < 1 or heads < 1 or heads % kv:
        raise _unsupported(path, "num_key_value_heads", kv, f"it must divide num_attention_heads ({heads})")
    head_dim = cfg.get("head_dim") or (d_model // heads if heads and d_model % heads == 0 else None)
    if not _is_int(head_dim) or head_dim % 2:
        raise _unsupported(path, "head_dim", head_dim, f"RoPE needs an even head dim (given, or hidden_size / "
                           f"num_attention_heads = {d_model} / {heads})")
    eps = cfg.get("rms_norm_eps", 1e-6)  # LlamaConfig's default
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        raise _unsupported(path, "rms_norm_eps", eps, "it must be a positive number")
    theta, scaling = _rope(path, cfg)
    bias = cfg["model_type"] == "qwen2" or bool(cfg.get("attention_bias", False))
    return LlamaShape(cfg["vocab_size"], cfg["max_position_embeddings"], d_model, cfg["num_hidden_layers"], heads,
                      cfg["intermediate_size"], float(theta), float(eps), bool(cfg.get("tie_word_embeddings", False)),
                      None if kv == heads else kv, None if head_dim * heads == d_model else head_dim, scaling, bias,
                      cfg["model_type"], cfg)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_supported(path: Path, cfg: dict) -> None:
    if cfg.get("model_type") not in _MODEL_TYPES:
        raise _unsupported(path, "model_type", cfg.get("model_type"), 'lmfast reads Llama and Qwen2 folders '
                           '(model_type "llama" or "qwen2")')
    if cfg.get("mlp_bias", False):
        raise _unsupported(path, "mlp_bias", cfg["mlp_bias"], "lmfast's feed-forward layers have no bias")
    if cfg.get("hidden_act", "silu") != "silu":
        raise _unsupported(path, "hidden_act", cfg["hidden_act"], "lmfast's feed-forward is SwiGLU (silu)")
    if cfg.get("attention_dropout", 0.0):
        raise _unsupported(path, "attention_dropout", cfg["attention_dropout"], "lmfast has no dropout (0.0)")
    if cfg.get("use_sliding_window", False):
        raise _unsupported(path, "use_sliding_window", cfg["use_sliding_window"], "lmfast attends to the whole "
                           "window (false)")


def _rope(path: Path, cfg: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from ``rope_scaling`` + ``rope_theta`` (transformers 4) or ``rope_parameters``
    (transformers 5: {rope_type, rope_theta, ...})."""
    params = cfg.get("rope_parameters")
    field_name = "rope_parameters" if params is not None else "rope_scaling"
    scaling = params if params is not None else cfg.get("rope_scaling")
    theta = (params or {}).get("rope_theta", cfg.get("rope_theta", 10000.0)) if isinstance(params, dict) else \
        cfg.get("rope_theta", 10000.0)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise _unsupported(path, "rope_theta", theta, "it must be a positive number")
    if scaling is None:
        return theta, None
    kind = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else None
    if kind == "default" and isinstance(scaling, dict) and not set(scaling) - {"rope_type", "type", "rope_theta"}:
        return theta, None
    if kind != "llama3" or any(not isinstance(scaling.get(k), (int, float)) for k in _LLAMA3):
        raise _unsupported(path, field_name, scaling, "lmfast implements plain RoPE and the llama3 type ("
                           f"{', '.join(_LLAMA3)})")
    return theta, {"rope_type": "llama3", **{k: float(scaling[k]) for k in _LLAMA3[:3]},
                   "original_max_position_embeddings": int(scaling["original_max_position_embeddings"])}


def llama_config(shape: LlamaShape, eos_token_id: int | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """A ``config.json`` for this shape, read alike by transformers 4.x and 5.x.

    A shape read from a folder (``shape.source``) keeps every field of that folder's config (its
    ``bos_token_id``, ``eos_token_id``, ``max_position_embeddings`` ...); the shape's own fields are written over it.
    """
    source = dict(shape.source or {})
    rope = {"rope_theta": shape.rope_theta, "rope_scaling": shape.rope_scaling}
    if "rope_parameters" in source:  # transformers 5's form: rewrite it, not a second, contradicting one
        rope = {"rope_parameters": {"rope_type": "default", **(shape.rope_scaling or {}),
                                    "rope_theta": shape.rope_theta}}
    own = {
        "architectures": [_MODEL_TYPES[shape.model_type]], "model_type": shape.model_type,
        "vocab_size": shape.vocab_size, "hidden_size": shape.d_model, "intermediate_size": shape.d_ff,
        "num_hidden_layers": shape.num_layers, "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.kv_heads, "head_dim": shape.width, "rms_norm_eps": shape.rms_norm_eps,
        **rope, "hidden_act": "silu", "tie_word_embeddings": shape.tie_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if shape.model_type == "llama":
        own |= {"attention_bias": shape.attention_bias, "mlp_bias": False}
    if "dtype" in source:
        own["dtype"] = own["torch_dtype"]
    defaults = {"max_position_embeddings": shape.context_length, "attention_dropout": 0.0, "initializer_range": 0.02,
                "bos_token_id": None, "eos_token_id": eos_token_id, "pad_token_id": None, "use_cache": True}
    return {**defaults, **source, **own}


def rope_rows_to_hf(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """q/k projection (heads·d_k, d_in): per head, rows (2i, 2i+1) of adjacent-pair RoPE -> (i, i + d_k/2)."""
    return w.reshape(num_heads, w.shape[0] // num_heads // 2, 2, -1).transpose(1, 2).reshape(w.shape)


def rope_rows_from_hf(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The inverse of :func:`rope_rows_to_hf`."""
    return w.reshape(num_heads, 2, w.shape[0] // num_heads // 2, -1).transpose(1, 2).reshape(w.shape)


def to_hf_state_dict(state: dict[str, torch.Tensor], num_heads: int, num_kv_heads: int | None = None,
                     tied: bool = False) -> dict[str, torch.Tensor]:
    """lmfast's state_dict -> ``LlamaForCausalLM``'s (HF names, q/k rows permuted), contiguous tensors.

    ``tied``: the head is the embedding, written once (``model.embed_tokens.weight``), as transformers saves it.
    """
    heads = {"q": num_heads, "k": num_kv_heads or num_heads}
    out = {}
    for name, t in state.items():
        if name in _TOP:
            if not (tied and name == "lm_head.weight"):
                out[_TOP[name]] = t
            continue
        _, i, rest = name.split(".", 2)
        hf = {**_PER_LAYER, **_BIASES}[rest]
        out[f"model.layers.{i}.{hf}"] = rope_rows_to_hf(t, heads[_ROPE_ROWS[rest]]) if rest in _ROPE_ROWS else t
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_state_dict(tensors: dict[str, torch.Tensor], shape: LlamaShape, source: str = "the folder"
                       ) -> dict[str, torch.Tensor]:
    """``LlamaForCausalLM``'s tensors -> lmfast's state_dict; missing or unexpected tensors raise naming them."""
    names = {hf: ours for ours, hf in _TOP.items()}
    per_layer = {**_PER_LAYER, **(_BIASES if shape.attention_bias else {})}
    names |= {f"model.layers.{i}.{hf}": f"layers.{i}.{ours}" for i in range(shape.num_layers)
              for ours, hf in per_layer.items()}
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}  # old HF checkpoints
    if shape.tie_word_embeddings and "lm_head.weight" not in tensors:
        tensors = {**tensors, "lm_head.weight": tensors.get("model.embed_tokens.weight")}
    missing = sorted(k for k in names if tensors.get(k) is None)
    unexpected = sorted(set(tensors) - set(names))
    if missing or unexpected:
        parts = [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
        raise UnsupportedModelError(f"{source}: the weights do not match a Llama model of num_hidden_layers="
                                    f"{shape.num_layers} ({'; '.join(parts)})")
    heads = {"q": shape.num_heads, "k": shape.kv_heads}
    out = {}
    for hf, ours in names.items():
        rest = ours.split(".", 2)[-1]
        t = tensors[hf]
        out[ours] = rope_rows_from_hf(t, heads[_ROPE_ROWS[rest]]) if rest in _ROPE_ROWS else t
    return out


def read_safetensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors``, or of the shards ``model.safetensors.index.json`` lists."""
    from safetensors.torch import load_file

    d = Path(directory)
    if (d / "model.safetensors").is_file():
        return load_file(d / "model.safetensors")
    index = d / "model.safetensors.index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{d} has no model.safetensors (nor model.safetensors.index.json); lmfast reads "
                                "safetensors weights. Convert a pytorch_model.bin folder with transformers: "
                                "LlamaForCausalLM.from_pretrained(DIR).save_pretrained(OUT)")
    shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    for shard in shards:
        if not (d / shard).is_file():
            raise FileNotFoundError(f"{d / shard} is listed in {index.name} but does not exist")
    return {k: v for shard in shards for k, v in load_file(d / shard).items()}


# ---------------------------------------------------------------------------------------------------------------
# Loading into lmfast


def init_from_hf(model: torch.nn.Module, directory: str | Path) -> None:
    """Load a folder's weights into ``model`` built from a training config; the architectures must agree.

    Differences name the config key to set (the trainer takes them from the folder, so it meets none).
    ``context_length`` may differ from ``max_position_embeddings``: RoPE has no learned positions.
    """
    folder, ours = read_llama_config(directory), LlamaShape.of(model)
    wanted, have = folder.train_keys(), ours.train_keys()
    wrong = [f"{k}: {json.dumps(v)} (the config has {json.dumps(have[k])})" for k, v in wanted.items()
             if not _same(v, have[k])]
    if wrong:
        raise UnsupportedModelError(f"--init-from {directory}: the folder's model has another architecture than the "
                                    f"config; set {', '.join(wrong)}")
    load_weights(model, directory, folder)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def load_weights(model: torch.nn.Module, directory: str | Path, shape: LlamaShape) -> None:
    """Load the folder's safetensors, in lmfast's names and RoPE row order, into ``model`` of that ``shape``."""
    state = from_hf_state_dict(read_safetensors(directory), shape, str(directory))
    load_model_state(model, state, directory)
