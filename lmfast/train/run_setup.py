"""Build a training run from its config: device, logging, tokenizer, data paths and the run directory.

:mod:`lmfast.train` re-exports the public names (``from lmfast.train import resolve_device`` keeps working);
they log to the ``train`` logger, as the rest of the trainer does.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmfast.train.config import TrainConfig

__all__ = ["SetupError", "ByteTokenizer", "build_tokenizer", "check_run_inputs", "load_run_tokenizer", "resolve_device",
           "resolve_eot", "setup_logging"]

log = logging.getLogger("train")
_LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


class SetupError(Exception):
    """Bad input found before training starts; the message names the problem and the fix."""


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda, then mps, then cpu; an explicit device that is not there is a :class:`SetupError`."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # "cuda:abc", "cuda:-1": torch's "Invalid device string"
        raise SetupError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N (N = 0, 1, ...: a GPU "
                         "index) or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SetupError(f"--device {name} was asked for, but CUDA is not available (torch {torch.__version__}); "
                         "use --device cpu, or install a CUDA build of torch on a machine with an NVIDIA GPU")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SetupError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SetupError(f"--device {name} was asked for, but Apple MPS is not available here; use --device cpu")
    return device


class _TqdmHandler(logging.Handler):
    """Console logging to the current stderr that prints above an active progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never kill training
            self.handleError(record)


def setup_logging(level: str = "INFO", log_file: str | None = None) -> None:
    """Console (+ appended file) handlers in the seed's format on the root logger; ``level`` for lmfast's loggers.

    Handlers from an earlier call are replaced; other libraries keep their own levels.
    """
    formatter = logging.Formatter(_LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [_TqdmHandler()]
    if log_file:
        handlers.append(_log_file_handler(Path(log_file)))
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_lmfast", False)]:
        root.removeHandler(h)
        h.close()
    for h in handlers:
        h._lmfast = True
        h.setFormatter(formatter)
        root.addHandler(h)
    for name in ("train", "lmfast"):
        logging.getLogger(name).setLevel(level)


def _log_file_handler(path: Path) -> logging.FileHandler:
    """A handler appending to ``path``; a directory, a read-only place or a bad name is a SetupError naming it."""
    if path.is_dir():
        raise SetupError(f"log_file {str(path)!r} is a directory; give a file path such as "
                         f"{str(path / 'training.log')!r}, or log_file: null for console only")
    blocker = _file_in_the_way(path.parent)
    if blocker is not None:
        raise SetupError(f"log_file {str(path)!r} cannot be opened: {str(blocker)!r} is a file, not a directory; "
                         "choose another path, or log_file: null for console only")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return logging.FileHandler(path, mode="a", encoding="utf-8")
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        raise SetupError(f"log_file {str(path)!r} cannot be opened for appending ({_reason(e)}); choose a path you "
                         "can write to, or log_file: null for console only") from None


def _reason(e: Exception) -> str:
    """An OSError's reason without its repeated path ("Read-only file system"), else the message itself."""
    return getattr(e, "strerror", None) or str(e)


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing one of ``path`` and its parents, if it is not a directory (mkdir would fail there)."""
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return None if p.is_dir() else p
    return None


def _check_writable_dir(path: Path, key: str) -> None:
    """``path`` is, or can be made, a directory this process can create files in; SetupError naming ``key`` if not.

    Creating a file is the test: permission bits say nothing of a read-only mount, and root ignores them.
    """
    blocker = _file_in_the_way(path)
    if blocker == path:
        raise SetupError(f"{key} {str(path)!r} is a file, not a directory; point {key} at a directory (it is "
                         "created if missing)")
    if blocker is not None:
        raise SetupError(f"{key} {str(path)!r} cannot be created: {str(blocker)!r} is a file, not a directory; "
                         f"point {key} at a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".lmfast-write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except (OSError, ValueError) as e:
        raise SetupError(f"{key} {str(path)!r} is not writable ({_reason(e)}); point {key} at a directory you can "
                         "write to") from None


def check_run_inputs(cfg: TrainConfig, device: torch.device) -> None:
    """What can be checked before anything is built or written: the backend, the run's directories, the memory.

    Each failure is a SetupError naming the key and the fix; a config that cannot fit in the device's memory is
    refused with the numbers (see :mod:`lmfast.train.memory`), not found out by the kernel's OOM killer.
    """
    from lmfast.data.registry import cache_dir
    from lmfast.model.ops import fused_unavailable_reason

    reason = fused_unavailable_reason(device)
    if cfg.backend == "fused" and reason is not None:
        raise SetupError(f"backend: fused cannot run here: {reason}; use backend: reference, or auto (fused where "
                         "it can run)")
    _check_writable_dir(Path(cfg.checkpoint_dir), "checkpoint_dir")
    _check_writable_dir(Path(cfg.cache_dir) if cfg.cache_dir is not None else cache_dir() / "tokens", "cache_dir")
    _check_memory(cfg, device)


def _check_memory(cfg: TrainConfig, device: torch.device) -> None:
    from lmfast.train.memory import available_memory, estimate_training_memory, format_bytes

    autocast = cfg.dtype in ("bfloat16", "float16") or (cfg.dtype == "auto" and device.type == "cuda")
    world = max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))  # torchrun's; 1 for a plain process
    need = estimate_training_memory(cfg, autocast, shards=world if cfg.distributed == "fsdp" else 1)
    have = available_memory(device)
    if have is None:
        return
    if device.type != "cuda":  # torchrun's processes on one host share its RAM
        have //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    if need.total <= have:
        return
    if need.weights_and_optimizer > have:
        fix = "the model alone does not fit: lower num_layers, d_model, d_ff or vocab_size"
    else:
        fix = ("lower batch_size or context_length (raise gradient_accumulation_steps to keep the tokens per step), "
               "or the model size")
    raise SetupError(f"this config needs about {format_bytes(need.total)} to train, but {device} has "
                     f"{format_bytes(have)} free: {need.parameters:,} parameters take "
                     f"{format_bytes(need.weights_and_optimizer)} (weights, gradients, AdamW state) and the "
                     f"activations of batch_size {cfg.batch_size} x context_length {cfg.context_length} over "
                     f"{cfg.num_layers} layers take {format_bytes(need.activations)}; {fix}")


def build_tokenizer(cfg: TrainConfig, train_path: Path, run_dir: Path, resuming: bool = False):
    """The run's tokenizer (None = byte level); ``tokenizer: train`` trains a BPE once and keeps it in run_dir.

    A BPE left in run_dir by an earlier run is reused only if it was trained with the same vocab_size and special
    tokens on text with the same content (sha256); a resumed run keeps its own even if the text changed since.
    """
    from lmfast.tokenizer import Tokenizer, train_bpe

    kind = cfg.tokenizer
    if kind is None:
        return None
    if kind == "gpt2":
        return Tokenizer.gpt2()
    if kind == "train":
        saved = run_dir / "tokenizer"
        if (saved / "vocab.json").is_file():
            _check_saved_tokenizer_is_for(saved, _trained_for(cfg, train_path), resuming)
            log.info("Using the BPE tokenizer trained earlier for this run: %s", saved)
            return Tokenizer.load(saved)
        if not isinstance(train_path, Path) or train_path.suffix != ".txt":
            raise SetupError(f"tokenizer: train needs one .txt file to train on, but train_data_path is "
                             f"{str(train_path)!r}; for documents (.jsonl, .parquet, a directory, a list of sources) "
                             "use tokenizer: gpt2 or a tokenizer directory")
        log.info("Training a BPE tokenizer (vocab %d) on %s ...", cfg.vocab_size, train_path)
        start = time.perf_counter()
        vocab, merges = train_bpe(str(train_path), cfg.vocab_size, cfg.special_tokens)
        tokenizer = Tokenizer(vocab, merges, cfg.special_tokens)
        _save_trained(tokenizer, saved, _trained_for(cfg, train_path))
        log.info("Tokenizer trained in %.1fs, saved to %s", time.perf_counter() - start, saved)
        return tokenizer
    path = Path(kind)
    if not path.is_dir():
        raise SetupError(f"tokenizer: {kind!r} is not a directory with vocab.json + merges.txt or a tokenizer.json; "
                         "use null (bytes), train, gpt2, or such a directory")
    return Tokenizer.load(path)


_TRAINED_FOR = "trained_for.json"  # the settings and text a run's trained tokenizer was made with


def _trained_for(cfg: TrainConfig, train_path: Path) -> dict:
    from lmfast.data.cache import _content_sha256

    return {"vocab_size": cfg.vocab_size, "special_tokens": list(cfg.special_tokens),
            "text_sha256": _content_sha256(train_path) if isinstance(train_path, Path) and train_path.is_file()
            else None}


def _save_trained(tokenizer, saved: Path, trained_for: dict) -> None:
    """Write the tokenizer and its trained_for.json into a temp folder, then rename it into place: all or nothing."""
    saved.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.", suffix=".tmp", dir=saved.parent))
    try:
        tokenizer.save(tmp)
        (tmp / _TRAINED_FOR).write_text(json.dumps(trained_for), encoding="utf-8")
        os.replace(tmp, saved)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SetupError(f"cannot save the trained tokenizer to {saved} ({e.strerror}); move away what is there "
                         "(it holds no vocab.json), or choose another checkpoint_dir") from None


def _check_saved_tokenizer_is_for(saved: Path, wanted: dict, resuming: bool) -> None:
    """A tokenizer an earlier run left in checkpoint_dir is reused only if it was made with these settings and text."""
    marker = saved / _TRAINED_FOR
    earlier = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None
    if earlier == wanted or (resuming and earlier is None):
        return
    fix = f"choose another checkpoint_dir, or move {saved} away to train a new one"
    if earlier is None:
        raise SetupError(f"{saved} holds a BPE tokenizer with no record of what it was trained on (no {_TRAINED_FOR}: "
                         f"made by an older lmfast); {fix}")
    settings = {k: v for k, v in wanted.items() if k != "text_sha256"}
    if {k: v for k, v in earlier.items() if k != "text_sha256"} != settings:
        raise SetupError(f"{saved} holds the BPE tokenizer of an earlier run in this checkpoint_dir, trained for "
                         f"{ {k: earlier.get(k) for k in settings} }, but this config asks for {settings}; {fix}")
    if resuming:
        log.warning("The training text changed since this run's tokenizer was trained on it (sha256 %s, now %s); "
                    "the resumed run keeps that tokenizer", str(earlier.get("text_sha256"))[:16],
                    str(wanted["text_sha256"])[:16])
        return
    raise SetupError(f"{saved} holds the BPE tokenizer of an earlier run in this checkpoint_dir, trained on other "
                     f"text (sha256 {str(earlier.get('text_sha256'))[:16]}..., this train_data_path has "
                     f"{str(wanted['text_sha256'])[:16]}...); {fix}")


def resolve_eot(cfg: TrainConfig, tokenizer) -> int | None:
    """The id written after each document (and that ``document_masking`` splits windows at): ``eot_token``'s, or the
    tokenizer's ``<|endoftext|>``; None for byte-level tokens. A SetupError names what is missing."""
    specials = dict(getattr(tokenizer, "special_tokens", None) or {})
    if cfg.eot_token is not None:
        if cfg.eot_token not in specials:
            raise SetupError(f"eot_token {cfg.eot_token!r} is not a special token of the tokenizer (it has "
                             f"{sorted(specials) or 'none'}); use one of those, or null for <|endoftext|>")
        return specials[cfg.eot_token]
    eot = getattr(tokenizer, "eot_id", None) if tokenizer is not None else None
    if eot is None and cfg.document_masking:
        raise SetupError("document_masking: true splits windows at the end-of-text token, but the tokenizer has none "
                         f"({'byte-level tokens' if tokenizer is None else 'no <|endoftext|>'}); use tokenizer: train "
                         "or gpt2 (with <|endoftext|> in special_tokens), or set eot_token to one of its special "
                         "tokens")
    return eot


def load_run_tokenizer(spec: str | None, run_dir: Path):
    """The tokenizer a checkpoint names (``bytes``, ``gpt2``, or a directory, relative to run_dir if so)."""
    from lmfast.tokenizer import Tokenizer

    if spec in (None, "bytes"):
        return ByteTokenizer()
    if spec == "gpt2":
        return Tokenizer.gpt2()
    path = Path(spec)
    return Tokenizer.load(path if path.is_absolute() else run_dir / path)


class ByteTokenizer:
    """Byte-level fallback: token id = UTF-8 byte (vocab 256); decode replaces invalid UTF-8 with U+FFFD."""

    vocab_size = 256
    eot_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids: list[int]) -> bytes:
        return bytes(i for i in ids if i < 256)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def _resolve_paths(cfg: TrainConfig) -> tuple[Path | list, Path | list | None]:
    """Train/val data: a path, or a list of ``{path, weight}`` sources as given; a corpus name (``shakespeare``,
    ``tinystories``) means that corpus's train/val split."""
    from lmfast.data.corpus import resolve_corpus

    def one(spec, split: int):
        if isinstance(spec, list):
            return spec
        corpus = resolve_corpus(spec)
        return Path(corpus[split]) if corpus else Path(spec)

    train = one(cfg.train_data_path, 0)
    if cfg.val_data_path is None:
        return train, None
    return train, one(cfg.val_data_path, 1)


def _archive_earlier_run(run_dir: Path) -> None:
    """A fresh run into a directory holding an earlier run's checkpoints moves them aside, never over them."""
    old = [p for p in run_dir.glob("*") if (p.suffix in (".pt", ".dcp") and not p.name.startswith(".")) or  # .dcp: fsdp
           p.name == "metrics.jsonl"]
    if not old:
        return
    stamp = time.strftime("previous-%Y%m%d-%H%M%S")
    dest, n = run_dir / stamp, 1
    while True:  # two fresh runs can archive within the same second
        try:
            dest.mkdir()
            break
        except FileExistsError:
            n += 1
            dest = run_dir / f"{stamp}-{n}"
    for p in old:
        os.replace(p, dest / p.name)
    if (run_dir / "tokenizer").is_dir():  # the moved checkpoints name it relative to their own directory
        shutil.copytree(run_dir / "tokenizer", dest / "tokenizer")
    log.info("Moved %d files of an earlier run in %s to %s (use --resume auto to continue a run instead)",
             len(old), run_dir, dest)
