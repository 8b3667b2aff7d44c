"""Export a trained model as a Hugging Face ``LlamaForCausalLM`` folder that ``transformers`` loads without lmfast.

    python -m lmfast.export --checkpoint checkpoints/quickstart/final_model.pt --out exported/quickstart

writes ``config.json``, ``model.safetensors``, ``generation_config.json``, ``tokenizer.json`` and
``tokenizer_config.json`` (see :mod:`lmfast.model.hf` for the weight layout, :mod:`lmfast.tokenizer.hf_json` for the
tokenizer). Then, with or without lmfast installed::

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("exported/quickstart")
    tokenizer = AutoTokenizer.from_pretrained("exported/quickstart")

Each file is written to a temporary name and moved into place, so an interrupted export leaves no half file.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from lmfast.data.cache import _atomic_path
from lmfast.model import TransformerLM
from lmfast.model.hf import LlamaShape, llama_config, to_hf_state_dict
from lmfast.model.weights import unwrap_model
from lmfast.tokenizer.hf_json import tokenizer_config, tokenizer_json

__all__ = ["save_hf", "export_checkpoint", "main"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def save_hf(model: TransformerLM, out: str | Path, tokenizer=None, dtype: torch.dtype = torch.float32,
            temperature: float = 0.8, top_p: float = 0.95, source: dict | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``: an lmfast Tokenizer, or None for bytes) as a HF Llama folder at ``out``.

    ``temperature`` / ``top_p`` become the defaults of ``generation_config.json`` (temperature 0: greedy).
    ``source``: the ``config.json`` of the folder the run started from (``--init-from``), whose fields the export
    keeps (``bos_token_id``, ``eos_token_id``, ``max_position_embeddings``, the model type ...).
    """
    from safetensors.torch import save_file

    model = unwrap_model(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shape = LlamaShape.of(model)
    if source:
        shape = replace(shape, source=source, model_type=source.get("model_type", "llama"))
    config = llama_config(shape, getattr(tokenizer, "eot_id", None), dtype)
    eos, bos = config["eos_token_id"], config["bos_token_id"]
    state = {k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}
    with _atomic_path(out / "model.safetensors") as tmp:
        hf_state = to_hf_state_dict(state, shape.num_heads, shape.kv_heads, shape.tie_embeddings)
        save_file(hf_state, tmp, metadata={"format": "pt"})
    generation = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": None, "do_sample": temperature > 0}
    if temperature > 0:
        generation |= {"temperature": temperature, "top_p": top_p}
    files = {"config.json": json.dumps(config, indent=2),
             "generation_config.json": json.dumps(generation, indent=2),
             "tokenizer.json": tokenizer_json(tokenizer),
             "tokenizer_config.json": json.dumps(tokenizer_config(tokenizer, shape.context_length), indent=2)}
    for name, text in files.items():
        with _atomic_path(out / name) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    return out


def export_checkpoint(checkpoint: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Export a checkpoint written by ``lmfast.train`` (its model, tokenizer and sampling defaults) to ``out``."""
    from lmfast.train.run_state import load_model  # rebuilds the model and tokenizer a training checkpoint names

    model, tokenizer, state = load_model(checkpoint, "cpu")
    cfg = state["config"]
    return save_hf(model, out, tokenizer, dtype, temperature=cfg.get("sample_temperature", 0.8),
                   top_p=cfg.get("sample_top_p", 0.95), source=(state.get("meta") or {}).get("hf_config"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmfast.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by python -m lmfast.train")
    parser.add_argument("--out", required=True, help="the folder to write (created if missing)")
    parser.add_argument("--dtype", default="float32", choices=sorted(_DTYPES),
                        help="dtype of the saved weights (default float32, as trained)")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out, _DTYPES[args.dtype])
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
