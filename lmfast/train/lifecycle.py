"""A run's hold on its directory and its ways out: the run lock, stop signals, leftover temp files, old checkpoints.

- :func:`lock_run_dir`: one training run per ``checkpoint_dir``. An exclusive ``flock`` on ``.lmfast.lock`` in it
  (holding the holder's PID and host), which the kernel releases when the process ends however it ends, so the
  file itself never blocks anyone: only a live holder does. It is never deleted (deleting a lock file lets two
  processes lock two different files of the same name). Under torchrun rank 0 takes it for all ranks.
  :func:`claim_run_dir` locks, then sweeps.
- :class:`StopSignals`: SIGINT and SIGTERM. During the loop they only ask it to stop: the step under way finishes
  (with its validation and checkpoints), ``interrupted.pt`` is written and the process exits with 128 + the signal
  number (130 for SIGINT, 143 for SIGTERM), the shell convention. Repeats while stopping are only acknowledged:
  under torchrun a Ctrl-C reaches each worker twice (from the terminal and from the agent), and a save must not be
  cut short. kill -9 remains the way to stop at once, and loses nothing that was saved. Outside the loop a signal
  raises :class:`Interrupted` (a BaseException, so ``except Exception`` blocks do not swallow it).
- :func:`sweep_run_dir`: the temp files and folders a kill -9 left in the run directory (ours, by name).
- :func:`prune_step_checkpoints`: ``keep_last`` for ``checkpoint_step_{s}.pt``.
- :func:`divergence_advice`: what a run whose loss became NaN says.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import socket
import stat
import threading
from pathlib import Path

import torch

from lmfast.train.config import TrainConfig
from lmfast.train.run_setup import SetupError

__all__ = ["RunLock", "lock_run_dir", "claim_run_dir", "StopSignals", "Interrupted", "agree_on_stop",
           "sweep_run_dir", "prune_step_checkpoints", "divergence_advice", "LOCK_NAME"]

log = logging.getLogger("train")
LOCK_NAME = ".lmfast.lock"


class RunLock:
    """An exclusive lock on a run directory, held until :meth:`release` or the end of the process."""

    def __init__(self, fd: int | None, path: Path):
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def lock_run_dir(run_dir: Path) -> RunLock:
    """Create ``run_dir`` and lock it; a :class:`SetupError` naming the holder's PID if another run holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one run per directory is then up to the user
        return RunLock(None, run_dir / LOCK_NAME)
    path = run_dir / LOCK_NAME
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a symbolic link planted at the lock's name must not make the run truncate its target
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SetupError(_not_a_lock(path, "a symbolic link")) from None
        raise SetupError(f"checkpoint_dir {str(run_dir)!r} cannot be written ({e.strerror}); choose a writable "
                         "checkpoint_dir") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:  # a FIFO or device; a hard link shares another file's bytes
        os.close(fd)
        raise SetupError(_not_a_lock(path, "not a regular file" if not stat.S_ISREG(st.st_mode) else
                                     f"a hard link ({st.st_nlink} names for one file)"))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown PID"
        os.close(fd)
        raise SetupError(f"checkpoint_dir {str(run_dir)!r} is in use by another training run ({holder}); wait for it "
                         "to finish or stop it, or choose another checkpoint_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return RunLock(fd, path)


def _not_a_lock(path: Path, what: str) -> str:
    return (f"{str(path)!r} is {what}, not the run lock lmfast keeps there, and a run would write to it; remove it "
            "(rm) and start again, or choose another checkpoint_dir")


def claim_run_dir(run_dir: Path) -> RunLock:
    """Lock ``run_dir`` and remove the temp files a killed run left there (ours alone, now that we hold it)."""
    lock = lock_run_dir(run_dir)
    for p in sweep_run_dir(run_dir):
        log.info("Removed %s, left by a run that was killed while saving", p)
    return lock


class Interrupted(BaseException):
    """SIGINT or SIGTERM outside the training loop: nothing more is saved; exit with :attr:`exit_code`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """SIGINT/SIGTERM handlers for one run: raise :class:`Interrupted`, or inside :meth:`deferred` ask to stop."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True):
        self.signum: int | None = None  # the first signal received (inside deferred(), or the one raised outside)
        self.announce = announce  # rank 0 tells the console; the other ranks keep quiet
        self.ignore_after = False  # the command line owns the process: after a stop, leave later signals ignored
        self._deferring = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for s in self.SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:  # `cmd &` in a script ignores SIGINT: keep that
                    self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            # A process that is ending because of a stop ignores the repeats still on their way (torchrun passes a
            # terminal's Ctrl-C on), which Python's own handler would turn into a traceback during teardown.
            signal.signal(s, signal.SIG_IGN if self.ignore_after and self.signum is not None else handler)
        self._previous.clear()

    @contextlib.contextmanager
    def deferred(self):
        """Inside this block a signal sets :attr:`signum` for the loop to act on at the next step boundary."""
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:  # a repeat: acknowledged, never a second exception while the first unwinds
            self._say(f"\n{name} again: still finishing the step and saving interrupted.pt; please wait\n"
                      if self._deferring else f"\n{name} again: already stopping; please wait\n")
            return
        self.signum = signum
        if not self._deferring:
            raise Interrupted(signum)
        self._say(f"\n{name}: finishing this step, then saving interrupted.pt (kill -9 stops at once and loses "
                  "only what was not saved yet)\n")

    def _say(self, text: str) -> None:
        if self.announce:  # os.write: no locks taken inside a signal handler (logging and tqdm hold some)
            with contextlib.suppress(OSError):
                os.write(2, text.encode())


def agree_on_stop(signum: int | None, dist) -> int | None:
    """The signal every rank acts on: under torchrun the largest any rank received (an all-reduce per step)."""
    if not dist.enabled:
        return signum
    flag = torch.tensor([signum or 0], dtype=torch.int32, device=dist.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item()) or None


# Temp names made by atomic_torch_save (``.<file>.<letters>.tmp``), for the trained tokenizer, metrics.jsonl and
# config.yaml (``.tokenizer.<letters>.tmp``, ``.metrics.jsonl.<letters>.tmp``, ``.config.yaml.<letters>.tmp``), and by
# an fsdp run's sharded saves (``.<name>.dcp.tmp``, ``.<name>.dcp.old``: a resume from an older checkpoint is as exact
# as any).
_RUN_TEMP = re.compile(r"^\.((.+\.pt|tokenizer|metrics\.jsonl|config\.yaml)\.[a-z0-9_]+\.tmp|.+\.dcp\.(tmp|old))$")


def sweep_run_dir(run_dir: Path) -> list[Path]:
    """Delete our temp files and folders in ``run_dir`` (call it holding the run lock: no one else writes there)."""
    removed = []
    for p in run_dir.iterdir() if run_dir.is_dir() else []:
        if _RUN_TEMP.match(p.name):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
    return removed


_STEP_CHECKPOINT = re.compile(r"^checkpoint_step_(\d+)\.(pt|dcp)$")  # .dcp: a directory (fsdp)


def prune_step_checkpoints(run_dir: Path, keep_last: int, upto_step: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` ``checkpoint_step_{s}.pt``/``.dcp`` with ``s <= upto_step`` (0: none).

    Best, final, epoch and interrupted checkpoints are never touched, nor step checkpoints past ``upto_step`` (left
    by a run resumed from an earlier checkpoint: the user may still want them).
    """
    if keep_last <= 0:
        return []
    steps = sorted((int(m.group(1)), p) for p in run_dir.iterdir() if (m := _STEP_CHECKPOINT.match(p.name)))
    older = [p for s, p in steps if s <= upto_step][:-keep_last]
    for p in older:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return older


def divergence_advice(error: FloatingPointError, cfg: TrainConfig, last_saved: tuple[Path, int] | None) -> str:
    """What to do about a non-finite loss: the settings to change, and the checkpoint to go back to if one exists."""
    key, lr = ("max_learning_rate", cfg.max_learning_rate) if cfg.use_lr_schedule else ("learning_rate",
                                                                                        cfg.learning_rate)
    change = f"lower {key} (now {lr:g})"
    if cfg.use_lr_schedule:
        change += f", lengthen warmup_iters (now {cfg.warmup_iters})"
    change += f" or clip gradients harder with grad_clip_norm (now {cfg.grad_clip_norm:g})"
    if last_saved is not None and last_saved[0].exists():
        path, step = last_saved
        return (f"{error}. The last checkpoint is {path} (step {step}); with the same settings the run would "
                f"diverge again, so {change}, then continue with --resume {path} --set {key}=...")
    return (f"{error}, and no checkpoint was saved before it. {change}, then start again (checkpoint_steps: N "
            "keeps checkpoints to go back to)")
