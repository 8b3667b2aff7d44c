"""Hugging Face Llama folders: lmfast's weights and shape to and from ``LlamaForCausalLM``'s layout.

A folder is ``config.json`` + ``model.safetensors`` (or ``model.safetensors.index.json`` and its shards).
Tensor names map one to one (``layers.{i}.attn.q_proj.weight`` <-> ``model.layers.{i}.self_attn.q_proj.weight``,
``ffn.w1/w3/w2`` <-> ``mlp.gate_proj/up_proj/down_proj``, ``ln1/ln2`` <-> ``input_layernorm`` /
``post_attention_layernorm``, ...). One thing differs beyond names: lmfast's RoPE rotates adjacent pairs
``(x[2i], x[2i+1])`` of each head (Meta's original Llama layout) while HF's rotates halves ``(x[i], x[i+d_k/2])``.
Permuting each head's q and k rows (row 2i -> i, row 2i+1 -> i + d_k/2, as transformers'
``convert_llama_weights_to_hf.py`` does) gives the same attention: scores are sums over the same pairs, and v
and o are untouched.

What lmfast reads (anything else is an :class:`UnsupportedModelError` naming the field): ``model_type`` llama;
``num_key_value_heads`` equal to ``num_attention_heads`` (no grouped-query attention); no attention or MLP
biases; ``hidden_act`` silu; no RoPE scaling; ``attention_dropout`` 0; an even head dim equal to
``hidden_size / num_attention_heads``. ``rms_norm_eps`` is honoured by :meth:`TransformerLM.from_hf`. A folder with
``tie_word_embeddings: true`` loads with ``lm_head`` a copy of ``embed_tokens``: lmfast's head is untied, so
from then on the two train apart, and an export writes them untied.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmfast.model.weights import load_model_state

__all__ = ["UnsupportedModelError", "LlamaShape", "read_llama_config", "llama_config", "rope_rows_to_hf",
           "rope_rows_from_hf", "to_hf_state_dict", "from_hf_state_dict", "read_safetensors", "load_weights",
           "init_from_hf"]

LMFAST_RMS_NORM_EPS = 1e-5  # RMSNorm's default: what TransformerLM builds and lmfast.train trains with

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
_TOP = {"token_embeddings.weight": "model.embed_tokens.weight", "ln_final.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight"}
_ROPE_ROWS = ("attn.q_proj.weight", "attn.k_proj.weight")


class UnsupportedModelError(ValueError):
    """A Hugging Face folder lmfast cannot read; the message names the field, its value and what is allowed."""


# ---------------------------------------------------------------------------------------------------------------
# Shape: config.json <-> TransformerLM's arguments


@dataclass(frozen=True)
class LlamaShape:
    """What lmfast needs of a Llama config: TransformerLM's arguments plus the norm eps and embedding tying."""

    vocab_size: int
    context_length: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    rope_theta: float
    rms_norm_eps: float = LMFAST_RMS_NORM_EPS
    tie_word_embeddings: bool = False

    def model_kwargs(self) -> dict:
        """The keyword arguments of :class:`TransformerLM` (and the same-named config keys)."""
        kw = asdict(self)
        del kw["rms_norm_eps"], kw["tie_word_embeddings"]
        return kw

    @classmethod
    def of(cls, model: torch.nn.Module) -> LlamaShape:
        """The shape of a :class:`~lmfast.model.TransformerLM`."""
        attn = model.layers[0].attn
        return cls(model.vocab_size, model.context_length, attn.d_model, len(model.layers), attn.num_heads,
                   model.layers[0].ffn.w1.out_features, attn.rope.theta, model.ln_final.eps)


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
                           "num_attention_heads", "max_position_embeddings") if not isinstance(cfg.get(k), int)]
    if missing:
        raise UnsupportedModelError(f"{path} lacks the integer field(s) {', '.join(missing)} that a Llama config has")
    heads, d_model = cfg["num_attention_heads"], cfg["hidden_size"]
    small = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                         "max_position_embeddings") if cfg[k] < 1]
    if small:
        raise _unsupported(path, small[0], cfg[small[0]], "it must be a positive integer")
    head_dim = cfg.get("head_dim") or d_model // heads
    if d_model % heads or head_dim != d_model // heads or head_dim % 2:
        raise _unsupported(path, "head_dim", head_dim, f"lmfast needs an even head dim equal to hidden_size / "
                           f"num_attention_heads = {d_model} / {heads}")
    eps = cfg.get("rms_norm_eps", 1e-6)  # LlamaConfig's default
    if not isinstance(eps, (int, float)) or eps <= 0:
        raise _unsupported(path, "rms_norm_eps", eps, "it must be a positive number")
    return LlamaShape(cfg["vocab_size"], cfg["max_position_embeddings"], d_model, cfg["num_hidden_layers"], heads,
                      cfg["intermediate_size"], float(_rope_theta(path, cfg)), float(eps),
                      bool(cfg.get("tie_word_embeddings", False)))


def _check_supported(path: Path, cfg: dict) -> None:
    if cfg.get("model_type") != "llama":
        raise _unsupported(path, "model_type", cfg.get("model_type"), 'lmfast reads Llama folders (model_type "llama")')
    heads = cfg.get("num_attention_heads")
    if cfg.get("num_key_value_heads") not in (None, heads):
        raise _unsupported(path, "num_key_value_heads", cfg["num_key_value_heads"],
                           f"lmfast's attention has as many key/value heads as query heads ({heads}); grouped-query "
                           "attention is not implemented")
    for field in ("attention_bias", "mlp_bias"):
        if cfg.get(field, False):
            raise _unsupported(path, field, cfg[field], "lmfast's linear layers have no bias")
    if cfg.get("hidden_act", "silu") != "silu":
        raise _unsupported(path, "hidden_act", cfg["hidden_act"], "lmfast's feed-forward is SwiGLU (silu)")
    if cfg.get("rope_scaling") is not None:
        raise _unsupported(path, "rope_scaling", cfg["rope_scaling"], "lmfast implements plain RoPE only (null)")
    if cfg.get("attention_dropout", 0.0):
        raise _unsupported(path, "attention_dropout", cfg["attention_dropout"], "lmfast has no dropout (0.0)")


def _rope_theta(path: Path, cfg: dict) -> float:
    # transformers >= 5 writes rope_parameters: {rope_type, rope_theta}; earlier versions rope_theta beside it
    params = cfg.get("rope_parameters")
    theta = cfg.get("rope_theta", 10000.0)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
        raise _unsupported(path, "rope_theta", theta, "it must be a positive number")
    if params is None:
        return theta
    if not isinstance(params, dict) or params.get("rope_type", "default") != "default" or \
            set(params) - {"rope_type", "rope_theta"}:
        raise _unsupported(path, "rope_parameters", params, 'lmfast implements plain RoPE only ({"rope_type": '
                           '"default", "rope_theta": ...})')
    return params.get("rope_theta", cfg.get("rope_theta", 10000.0))


def llama_config(shape: LlamaShape, eos_token_id: int | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """A ``config.json`` for ``LlamaForCausalLM`` of this shape, read alike by transformers 4.x and 5.x."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": shape.vocab_size, "hidden_size": shape.d_model, "intermediate_size": shape.d_ff,
        "num_hidden_layers": shape.num_layers, "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_heads, "head_dim": shape.d_model // shape.num_heads,
        "max_position_embeddings": shape.context_length, "rms_norm_eps": shape.rms_norm_eps,
        "rope_theta": shape.rope_theta, "rope_scaling": None, "hidden_act": "silu", "attention_bias": False,
        "attention_dropout": 0.0, "mlp_bias": False, "tie_word_embeddings": False, "initializer_range": 0.02,
        "bos_token_id": None, "eos_token_id": eos_token_id, "pad_token_id": None, "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


# ---------------------------------------------------------------------------------------------------------------
# Weights


def rope_rows_to_hf(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """q/k projection (heads·d_k, d_in): per head, rows (2i, 2i+1) of adjacent-pair RoPE -> (i, i + d_k/2)."""
    return w.reshape(num_heads, w.shape[0] // num_heads // 2, 2, -1).transpose(1, 2).reshape(w.shape)


def rope_rows_from_hf(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The inverse of :func:`rope_rows_to_hf`."""
    return w.reshape(num_heads, 2, w.shape[0] // num_heads // 2, -1).transpose(1, 2).reshape(w.shape)


def to_hf_state_dict(state: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """lmfast's state_dict -> ``LlamaForCausalLM``'s (HF names, q/k rows permuted), contiguous tensors."""
    out = {}
    for name, t in state.items():
        if name in _TOP:
            out[_TOP[name]] = t
            continue
        _, i, rest = name.split(".", 2)
        out[f"model.layers.{i}.{_PER_LAYER[rest]}"] = rope_rows_to_hf(t, num_heads) if rest in _ROPE_ROWS else t
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_state_dict(tensors: dict[str, torch.Tensor], shape: LlamaShape, source: str = "the folder"
                       ) -> dict[str, torch.Tensor]:
    """``LlamaForCausalLM``'s tensors -> lmfast's state_dict; missing or unexpected tensors raise naming them."""
    names = {hf: ours for ours, hf in _TOP.items()}
    names |= {f"model.layers.{i}.{hf}": f"layers.{i}.{ours}" for i in range(shape.num_layers)
              for ours, hf in _PER_LAYER.items()}
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}  # old HF checkpoints
    if shape.tie_word_embeddings and "lm_head.weight" not in tensors:
        tensors = {**tensors, "lm_head.weight": tensors.get("model.embed_tokens.weight")}
    missing = sorted(k for k in names if tensors.get(k) is None)
    unexpected = sorted(set(tensors) - set(names))
    if missing or unexpected:
        parts = [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
        raise UnsupportedModelError(f"{source}: the weights do not match a Llama model of num_hidden_layers="
                                    f"{shape.num_layers} ({'; '.join(parts)})")
    out = {}
    for hf, ours in names.items():
        rest = ours.split(".", 2)[-1]
        out[ours] = rope_rows_from_hf(tensors[hf], shape.num_heads) if rest in _ROPE_ROWS else tensors[hf]
    return out


def read_safetensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors``, or of the shards ``model.safetensors.index.json`` lists."""
    from safetensors.torch import load_file

    d = Path(directory)
    if (d / "model.safetensors").is_file():
        return _load_safetensors(load_file, d / "model.safetensors")
    index = d / "model.safetensors.index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{d} has no model.safetensors (nor model.safetensors.index.json); lmfast reads "
                                "safetensors weights. Convert a pytorch_model.bin folder with transformers: "
                                "LlamaForCausalLM.from_pretrained(DIR).save_pretrained(OUT)")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # bad JSON, no weight_map, not a mapping
        raise UnsupportedModelError(f"{index} is not a safetensors index ({type(e).__name__}: {e}); it needs "
                                    '"weight_map": {tensor name: shard file}') from None
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard or not (d / shard).is_file():
            raise FileNotFoundError(f"{d / str(shard)} is listed in {index.name} but is not a file in {d}")
    return {k: v for shard in shards for k, v in _load_safetensors(load_file, d / shard).items()}


def _load_safetensors(load_file, path: Path) -> dict[str, torch.Tensor]:
    """safetensors' ``load_file``; a truncated or corrupt file is an UnsupportedModelError naming it."""
    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 - SafetensorError (header, size) is not importable by a stable name
        raise UnsupportedModelError(f"{path} cannot be read as safetensors ({' '.join(str(e).split())[:200]}); it is "
                                    "truncated or corrupt, so copy or download it again") from None


# ---------------------------------------------------------------------------------------------------------------
# Loading into lmfast


def init_from_hf(model: torch.nn.Module, directory: str | Path) -> None:
    """Load a Llama folder's weights into ``model`` built from a training config; the shapes must agree.

    Differences name the config key to set. ``context_length`` may differ from ``max_position_embeddings``: RoPE
    has no learned positions. ``rms_norm_eps`` must be lmfast's 1e-5, which the trainer and its checkpoints use.
    """
    folder, ours = read_llama_config(directory), LlamaShape.of(model)
    keys = ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "rope_theta")
    wrong = [f"{k}: {getattr(folder, k)} (the config has {getattr(ours, k)})" for k in keys
             if not math.isclose(getattr(folder, k), getattr(ours, k))]
    if wrong:
        raise UnsupportedModelError(f"--init-from {directory}: the folder's model has another shape than the "
                                    f"config; set {', '.join(wrong)}")
    if not math.isclose(folder.rms_norm_eps, ours.rms_norm_eps):
        raise UnsupportedModelError(f"{Path(directory) / 'config.json'}: rms_norm_eps={folder.rms_norm_eps} is not "
                                    f"supported for training: lmfast trains and checkpoints with {ours.rms_norm_eps}; "
                                    "TransformerLM.from_hf reads it for inference")
    load_weights(model, directory, folder)


def load_weights(model: torch.nn.Module, directory: str | Path, shape: LlamaShape) -> None:
    """Load the folder's safetensors, in lmfast's names and RoPE row order, into ``model`` of that ``shape``."""
    state = from_hf_state_dict(read_safetensors(directory), shape, str(directory))
    load_model_state(model, state, directory)
