"""Export a trained model as a Hugging Face ``LlamaForCausalLM`` folder that ``transformers`` loads without lmfast.

    python -m lmfast.export --checkpoint checkpoints/quickstart/final_model.pt --out exported/quickstart

writes ``config.json``, ``model.safetensors``, ``generation_config.json``, ``tokenizer.json`` and
``tokenizer_config.json`` (see :mod:`lmfast.model.hf` for the weight layout, :mod:`lmfast.tokenizer.hf_json` for the
tokenizer). Then, with or without lmfast installed::

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("exported/quickstart")
    tokenizer = AutoTokenizer.from_pretrained("exported/quickstart")

The folder is whole or not there: every file is written into a temporary folder beside ``--out``, which then takes
its place in one rename (Linux swaps it with an earlier export atomically, ``renameat2(RENAME_EXCHANGE)``; elsewhere
the earlier one is renamed away first, so a kill between the two renames leaves no folder, never a mix). An
interrupted export leaves ``--out`` as it was. The files get the usual permissions (umask), not a temp file's 0600.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch

from lmfast import command_name
from lmfast.model import TransformerLM
from lmfast.model.hf import LlamaShape, llama_config, to_hf_state_dict
from lmfast.model.weights import unwrap_model
from lmfast.tokenizer.hf_json import tokenizer_config, tokenizer_json
from lmfast.train.run_setup import SetupError

__all__ = ["save_hf", "export_checkpoint", "main", "EXPORT_FILES"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXPORT_FILES = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def save_hf(model: TransformerLM, out: str | Path, tokenizer=None, dtype: torch.dtype = torch.float32,
            temperature: float = 0.8, top_p: float = 0.95, source: dict | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``: an lmfast Tokenizer, or None for bytes) as a HF Llama folder at ``out``.

    ``temperature`` / ``top_p`` become the defaults of ``generation_config.json`` (temperature 0: greedy).
    ``source``: the ``config.json`` of the folder the run started from (``--init-from``), whose fields the export
    keeps (``bos_token_id``, ``eos_token_id``, ``max_position_embeddings``, the model type ...). ``out`` must be new,
    empty or an earlier export (ValueError otherwise); it is replaced whole (see the module docstring).
    """
    from safetensors.torch import save_file

    model, out = unwrap_model(model), Path(out)
    _check_out(out)
    shape = LlamaShape.of(model)
    if source:
        shape = replace(shape, source=source, model_type=source.get("model_type", "llama"))
    config = llama_config(shape, getattr(tokenizer, "eot_id", None), dtype)
    eos, bos = config["eos_token_id"], config["bos_token_id"]
    state = {k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}
    generation = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": None, "do_sample": temperature > 0}
    if temperature > 0:
        generation |= {"temperature": temperature, "top_p": top_p}
    files = {"config.json": json.dumps(config, indent=2),
             "generation_config.json": json.dumps(generation, indent=2),
             "tokenizer.json": tokenizer_json(tokenizer),
             "tokenizer_config.json": json.dumps(tokenizer_config(tokenizer, shape.context_length), indent=2)}
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep(out)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()  # not mkdtemp: its 0700 would stay the folder's mode
    try:
        hf_state = to_hf_state_dict(state, shape.num_heads, shape.kv_heads, shape.tie_embeddings)
        _save_safetensors(save_file, hf_state, tmp / "model.safetensors")
        os.chmod(tmp / "model.safetensors", 0o666 & ~_umask())  # safetensors creates it 0600
        for name, text in files.items():
            (tmp / name).write_text(text + "\n", encoding="utf-8")
        for name in EXPORT_FILES:
            _fsync(tmp / name)
        _fsync(tmp)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_out(out: Path) -> None:
    """``--out`` is a folder path that is new, empty or an earlier export; ValueError saying what it is instead."""
    for p in (out, *out.parents):
        if os.path.lexists(p) and not p.is_dir():
            where = "is a file" if p == out else f"cannot be created: {str(p)!r} is a file"
            raise ValueError(f"--out {str(out)!r} {where}; give a folder path (it is created if missing)")
        if os.path.lexists(p):
            break
    others = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES) if out.is_dir() else []
    if others:
        raise ValueError(f"--out {str(out)!r} holds files an export does not write ({', '.join(others[:4])}); the "
                         "export replaces the whole folder, so give a new or empty folder, or one an earlier export "
                         "wrote")


def _save_safetensors(save_file, tensors: dict, path: Path) -> None:
    """safetensors' ``save_file``, its I/O failures raised as the OSError they are (it wraps them in its own
    exception type: "I/O error: No space left on device (os error 28)")."""
    try:
        save_file(tensors, path, metadata={"format": "pt"})
    except Exception as e:  # noqa: BLE001 - SafetensorError is not importable by a stable name
        code = re.search(r"\(os error (\d+)\)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from e


def _umask() -> int:
    """The process's umask, read without setting it where Linux shows it (setting it is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sweep(out: Path) -> None:
    """Remove the temporary folders a killed export to ``out`` left beside it."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.[0-9a-f]{{8}}\.(tmp|old)$")
    for p in out.parent.iterdir():
        if pattern.match(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Put the folder ``tmp`` at ``out``: swapped with an earlier one in one step where Linux allows it."""
    if not os.path.lexists(out):
        os.replace(tmp, out)
        return
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # now the earlier export
        return
    old = out.with_name(tmp.name.removesuffix(".tmp") + ".old")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """``renameat2(a, b, RENAME_EXCHANGE)``: swap two paths atomically (Linux >= 3.15, glibc >= 2.28); False where it
    is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a filesystem or kernel without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def export_checkpoint(checkpoint: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Export a checkpoint written by ``lmfast.train`` (its model, tokenizer and sampling defaults) to ``out``."""
    from lmfast.train.run_state import load_model  # rebuilds the model and tokenizer a training checkpoint names

    _check_out(Path(out))  # before the checkpoint is read
    model, tokenizer, state = load_model(checkpoint, "cpu")
    cfg = state["config"]
    return save_hf(model, out, tokenizer, dtype, temperature=cfg.get("sample_temperature", 0.8),
                   top_p=cfg.get("sample_top_p", 0.95), source=(state.get("meta") or {}).get("hf_config"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("export"), description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a .pt file or .dcp directory written by lmfast.train")
    parser.add_argument("--out", required=True, help="the folder to write: new, empty or an earlier export (replaced "
                                                     "whole)")
    parser.add_argument("--dtype", default="float32", choices=sorted(_DTYPES),
                        help="dtype of the saved weights (default float32, as trained)")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out, _DTYPES[args.dtype])
    except (FileNotFoundError, ValueError, SetupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only disk, no permission: the earlier folder at --out is kept
        print(f"error: cannot write the export to {args.out!r} ({e.strerror or e}); free some space or choose a "
              "folder you can write to; whatever was at --out is unchanged", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nstopped by Ctrl-C; {args.out!r} is as it was before the export", file=sys.stderr)
        return 130
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
