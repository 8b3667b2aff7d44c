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
import time
from pathlib import Path

import torch

from lmfast.config import TrainConfig

__all__ = ["SetupError", "ByteTokenizer", "build_tokenizer", "load_run_tokenizer", "resolve_device", "setup_logging"]

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
    device = torch.device(name)
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
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
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


def build_tokenizer(cfg: TrainConfig, train_path: Path, run_dir: Path):
    """The run's tokenizer (None = byte level); ``tokenizer: train`` trains a BPE once and keeps it in run_dir."""
    from lmfast.tokenizer import Tokenizer, train_bpe

    kind = cfg.tokenizer
    if kind is None:
        return None
    if kind == "gpt2":
        return Tokenizer.gpt2()
    if kind == "train":
        saved = run_dir / "tokenizer"
        if (saved / "vocab.json").is_file():
            _check_saved_tokenizer_is_for(saved, cfg)
            log.info("Using the BPE tokenizer trained earlier for this run: %s", saved)
            return Tokenizer.load(saved)
        if train_path.suffix != ".txt":
            raise SetupError(f"tokenizer: train needs text to train on, but train_data_path is {str(train_path)!r}")
        log.info("Training a BPE tokenizer (vocab %d) on %s ...", cfg.vocab_size, train_path)
        start = time.perf_counter()
        vocab, merges = train_bpe(str(train_path), cfg.vocab_size, cfg.special_tokens)
        tokenizer = Tokenizer(vocab, merges, cfg.special_tokens)
        tokenizer.save(saved)
        (saved / _TRAINED_FOR).write_text(json.dumps(_trained_for(cfg)), encoding="utf-8")
        log.info("Tokenizer trained in %.1fs, saved to %s", time.perf_counter() - start, saved)
        return tokenizer
    path = Path(kind)
    if not path.is_dir():
        raise SetupError(f"tokenizer: {kind!r} is not a directory with vocab.json + merges.txt; "
                         "use null (bytes), train, gpt2, or such a directory")
    return Tokenizer.load(path)


_TRAINED_FOR = "trained_for.json"  # the settings a run's trained tokenizer was made with


def _trained_for(cfg: TrainConfig) -> dict:
    return {"vocab_size": cfg.vocab_size, "special_tokens": list(cfg.special_tokens)}


def _check_saved_tokenizer_is_for(saved: Path, cfg: TrainConfig) -> None:
    """A tokenizer an earlier run left in checkpoint_dir is reused only if it was trained with these settings."""
    marker = saved / _TRAINED_FOR
    if not marker.is_file():
        return
    earlier = json.loads(marker.read_text(encoding="utf-8"))
    if earlier != _trained_for(cfg):
        raise SetupError(f"{saved} holds the BPE tokenizer of an earlier run in this checkpoint_dir, trained for "
                         f"{earlier}, but this config asks for {_trained_for(cfg)}; choose another checkpoint_dir, "
                         f"or move {saved} away to train a new one")


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


def _resolve_paths(cfg: TrainConfig) -> tuple[Path, Path | None]:
    """Train/val paths; a corpus name (``shakespeare``, ``tinystories``) means that corpus's train/val split."""
    from lmfast.corpus import resolve_corpus

    train = resolve_corpus(cfg.train_data_path)
    val = resolve_corpus(cfg.val_data_path) if cfg.val_data_path else None
    return (Path(train[0]) if train else Path(cfg.train_data_path),
            Path(val[1]) if val else Path(cfg.val_data_path) if cfg.val_data_path else None)


def _archive_earlier_run(run_dir: Path) -> None:
    """A fresh run into a directory holding an earlier run's checkpoints moves them aside, never over them."""
    old = [p for p in run_dir.glob("*") if p.suffix in (".pt", ".dcp") or p.name == "metrics.jsonl"]  # .dcp: fsdp
    if not old:
        return
    dest = run_dir / time.strftime("previous-%Y%m%d-%H%M%S")
    dest.mkdir()
    for p in old:
        os.replace(p, dest / p.name)
    if (run_dir / "tokenizer").is_dir():  # the moved checkpoints name it relative to their own directory
        shutil.copytree(run_dir / "tokenizer", dest / "tokenizer")
    log.info("Moved %d files of an earlier run in %s to %s (use --resume auto to continue a run instead)",
             len(old), run_dir, dest)
