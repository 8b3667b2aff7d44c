"""Where a run's numbers go: ``metrics.jsonl`` always, TensorBoard and Weights & Biases when asked for.

Each record is a flat dict with ``step`` and numeric fields (``loss``, ``lr``, ``val_loss``, ...). The optional
sinks are imported when the run is built, so a missing package is an error before training, not after it.
A resumed run first drops the records past the step it resumes from (:meth:`MetricsLogger.drop_after`), so
``metrics.jsonl`` holds each step once, as an uninterrupted run's does.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "MissingPackageError"]

log = logging.getLogger("train")


class MissingPackageError(RuntimeError):
    """An optional sink was asked for but its package is not installed; the message says what to install."""


def _summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingPackageError("tensorboard: true needs the tensorboard package: "
                                  "pip install \"lmfast[tensorboard]\" (or pip install tensorboard)") from None
    return SummaryWriter(log_dir=str(log_dir))


def _wandb_run(project: str, run_dir: Path, config: dict[str, Any]):
    try:
        import wandb
    except ImportError:
        raise MissingPackageError(f"wandb_project: {project} needs the wandb package: pip install wandb "
                                  "(set WANDB_MODE=offline on a machine without internet)") from None
    return wandb.init(project=project, dir=str(run_dir), config=config, name=run_dir.name)


class MetricsLogger:
    """Append records to ``run_dir/metrics.jsonl`` and mirror their numbers to TensorBoard / W&B."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any] | None = None, tensorboard: bool = False,
                 wandb_project: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self._tb = _summary_writer(self.run_dir / "tensorboard") if tensorboard else None
        self._wandb = _wandb_run(wandb_project, self.run_dir, config or {}) if wandb_project else None

    def log(self, **record: Any) -> None:
        """Write one record (must hold ``step``)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        numbers_only = {k: v for k, v in record.items() if k != "step" and isinstance(v, numbers.Real)}
        if self._tb is not None:
            for key, value in numbers_only.items():
                self._tb.add_scalar(key, value, global_step=record["step"])
        if self._wandb is not None:
            self._wandb.log(numbers_only, step=record["step"])

    def drop_after(self, step: int) -> int:
        """Rewrite metrics.jsonl without the records past ``step`` (and any line a kill cut short); returns how many.

        A resumed run repeats the steps after its checkpoint, so their old records would appear twice.
        """
        if not self.path.is_file():
            return 0
        lines = self.path.read_bytes().splitlines(keepends=True)
        damaged = sum(1 for line in lines if not _is_utf8(line))
        if damaged:  # bytes a kill cannot leave: the disk or a copy changed them
            log.warning("%s: dropped %d line(s) that are not UTF-8 text (damaged on disk); the other records are kept",
                        self.path, damaged)
        kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
        if len(kept) == len(lines):
            return 0
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.run_dir)
        with os.fdopen(fd, "wb") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return len(lines) - len(kept)

    def close(self) -> None:
        """Flush and close the optional sinks."""
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _step_of(line: bytes) -> int | None:
    """The ``step`` of one metrics.jsonl line; None for a line that is not a whole record (cut off by a kill, or bytes
    that are not UTF-8)."""
    if not line.endswith(b"\n"):
        return None
    try:
        step = json.loads(line.decode("utf-8")).get("step")
    except (ValueError, AttributeError):  # UnicodeDecodeError is a ValueError
        return None
    return step if isinstance(step, int) else None
