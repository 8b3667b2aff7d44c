"""Checkpoints: one dict under fixed keys, written atomically, loaded with ``weights_only=True``.

Keys: ``model`` (the un-compiled module's state_dict), ``optimizer``, ``step`` (= ``iteration``), and, from
the trainer, ``schedule``, ``data``, ``rng``, ``config`` and ``meta``. A path is written to a temporary file
beside it and moved into place with ``os.replace``, so a crash mid-write never leaves a truncated checkpoint.

``checksum`` holds a CRC-32 of every tensor and one of all other values; :func:`read_checkpoint` recomputes them
and refuses a checkpoint that differs, naming the tensor. torch's zip reader does not check the CRCs its own
archive stores, so without this a flipped byte on disk or in a copy loads as a slightly different weight.
Cost: 48 ms for the quickstart model's 26 MB of model + optimizer state (zlib's CRC-32, measured on a busy
2-core machine), against about 250 ms for the save itself.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

import torch

from lmfast.model.weights import check_model_shapes, device_of, load_model_state, unwrap_model

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "load_model_state", "check_model_shapes",
           "unwrap_model", "atomic_torch_save", "CheckpointWriteError", "checksums", "checksummed", "load_checked"]

PathOrFile = str | os.PathLike | BinaryIO | IO[bytes]


def atomic_torch_save(obj: Any, out: PathOrFile) -> None:
    """``torch.save`` to a file object, or to a path through a temp file + ``os.replace``."""
    if not isinstance(out, (str, os.PathLike)):
        torch.save(obj, out)
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = _os_error_in(e)
        if cause is None:
            raise
        raise CheckpointWriteError(_write_failure(path, cause)) from e


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota, I/O error); the file it would replace is untouched."""


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: torch.save reports a failed write as a RuntimeError ("unexpected pos ...") whose
    context holds the real one (ENOSPC)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _write_failure(path: Path, error: OSError) -> str:
    reason = error.strerror or str(error)
    try:
        free = f"; {shutil.disk_usage(path.parent).free / (1 << 20):,.0f} MiB free there"
    except OSError:
        free = ""
    fix = "free some space or point checkpoint_dir at a disk with room" if error.errno in (errno.ENOSPC,
                                                                                         errno.EDQUOT) else \
        "check the disk and that checkpoint_dir is writable"
    return f"cannot write checkpoint {str(path)!r}: {reason}{free}; {fix}. Any earlier file of that name is kept"


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, iteration: int,
                    out: PathOrFile, **extra: Any) -> None:
    """Save model, optimizer and ``iteration`` (plus any ``extra`` keys) to a path or binary file object."""
    state = {
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(iteration),
        **extra,
    }
    atomic_torch_save(checksummed(state), out)


def checksummed(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its ``checksum`` key added (see :func:`checksums`), as every lmfast checkpoint is saved."""
    return {**state, _CHECKSUM: {"crc32": checksums(state)}}


_CHECKSUM = "checksum"
_OTHER = "<values other than tensors>"


def checksums(state: dict[str, Any]) -> dict[str, int]:
    """CRC-32 of each tensor in a checkpoint dict by its path (``model/ln_final.weight``), and one of all else.

    A tensor's sum covers its dtype, shape and bytes; the other values (ints, floats, strings, the nesting and the
    keys themselves) go into one sum, in order.
    """
    sums, other = {}, 0
    for path, leaf in _leaves(state, ""):
        if isinstance(leaf, torch.Tensor):
            sums[path] = _tensor_crc(leaf)
        else:
            other = zlib.crc32(f"{path}={leaf!r}\n".encode(), other)
    sums[_OTHER] = other
    return sums


def _leaves(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        yield path, f"<{type(obj).__name__} keys {list(obj)!r}>"
        for key, value in obj.items():
            yield from _leaves(value, f"{path}/{key}" if path else str(key))
    elif isinstance(obj, (list, tuple)):
        yield path, f"<{type(obj).__name__} of {len(obj)}>"
        for i, value in enumerate(obj):
            yield from _leaves(value, f"{path}/{i}")
    else:
        yield path, obj


def _tensor_crc(t: torch.Tensor) -> int:
    t = t.detach().cpu().contiguous()
    head = zlib.crc32(f"{t.dtype}{tuple(t.shape)}".encode())
    return zlib.crc32(t.reshape(-1).view(torch.uint8).numpy(), head)


def _verify(state: dict[str, Any], what: str) -> None:
    """Raise if ``state`` differs from the checksums saved in it (checkpoints from before they existed pass)."""
    if _CHECKSUM not in state:
        return
    saved = state.pop(_CHECKSUM)
    then = saved.get("crc32") if isinstance(saved, dict) else None
    if not isinstance(then, dict):
        raise ValueError(f"{what} holds a '{_CHECKSUM}' entry that is not the table of CRC-32 sums lmfast writes; it "
                         "was changed after it was saved, so use another checkpoint")
    now = checksums(state)
    bad = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))
    if bad:
        raise ValueError(f"{what} is corrupt: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} "
                         "differ from the checksum saved with it (a changed byte on disk or in a copy); use another "
                         "checkpoint (--resume PATH, or move this one away for --resume auto) or copy it again")


def read_checkpoint(src: PathOrFile, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``) and check its checksums; errors name the file and the fix.

    The returned dict no longer holds the ``checksum`` key.
    """
    name = str(src) if isinstance(src, (str, os.PathLike)) else getattr(src, "name", "<file object>")
    if isinstance(src, (str, os.PathLike)) and (Path(src) / ".metadata").is_file():
        raise ValueError(f"{name!r} is a sharded checkpoint (a .dcp directory an fsdp run writes), not a single file; "
                         "lmfast.train.run_state.load_model and --resume read it")
    if isinstance(src, (str, os.PathLike)) and Path(src).is_dir():
        raise ValueError(f"checkpoint {name!r} is a directory; pass a .pt file in it, or a .dcp directory an fsdp "
                         "run wrote")
    if isinstance(src, (str, os.PathLike)) and not Path(src).is_file():
        raise FileNotFoundError(f"checkpoint {name!r} does not exist; pass a .pt file written by lmfast.train")
    state = load_checked(src, map_location, f"checkpoint {name!r}")
    if "model" not in state or "step" not in state:
        raise ValueError(f"checkpoint {name!r} is not an lmfast checkpoint: expected a dict with 'model' and 'step'")
    return state


def load_checked(src: PathOrFile, map_location: str | torch.device = "cpu", what: str | None = None) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a dict lmfast saved, its checksums verified and removed; ValueError
    saying why not. ``what`` names the file in errors (default: "checkpoint '<path>'")."""
    what = what or f"checkpoint {str(src)!r}"
    try:
        state = torch.load(src, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle/zip errors differ across torch versions
        raise ValueError(_load_failure(what, e)) from None
    if not isinstance(state, dict):
        raise ValueError(f"{what} holds a {type(state).__name__}, not the dict lmfast saves; it was not written by "
                         "lmfast")
    _verify(state, what)
    return state


def _load_failure(what: str, e: Exception) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused the file ``what`` names; a code-carrying pickle
    says so in full, with torch's own warning about loading it any other way."""
    text = str(e)
    if "Weights only load failed" in text:
        paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
        detail = next((p for p in paragraphs[1:] if not p.startswith("Check the documentation")), "")
        if "GLOBAL" in detail.upper():  # a pickle that imports something: the way code rides in a checkpoint
            warning = next((s.strip() + "." for s in paragraphs[0].split(". ") if "arbitrary code" in s), "")
            return (f"{what} was refused: it holds Python objects other than tensors and plain data "
                    f"({detail.rstrip('.')}), and lmfast loads checkpoints with weights_only=True, which runs no code "
                    f"from the file. torch: \"{warning} Do it only if you got the file from a trusted source.\"")
        text = detail or text
    brief = " ".join(text.split())
    brief = brief if len(brief) <= 300 else brief[:300] + "..."
    return (f"{what} cannot be read ({type(e).__name__}: {brief}); it is truncated, corrupt, or not a torch "
            "checkpoint")


def load_checkpoint(src: PathOrFile, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore ``model`` (and ``optimizer``) from a path or file object; returns the saved iteration."""
    state = read_checkpoint(src, map_location=device_of(model))
    load_model_state(model, state["model"], src)
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])
