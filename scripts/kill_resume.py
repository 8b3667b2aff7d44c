"""Stop a small CPU training run at random moments, resume it until done, and hold it equal to a run never stopped.

    nice python scripts/kill_resume.py --kills 120 --seed 0 --out benchmarks/results/kill_resume_cpu.md

Each trial starts a fresh run in its own directory and stops it with SIGKILL, SIGTERM or SIGINT at a chosen
moment: inside a training step (after its batch was drawn), during validation, while a checkpoint's temp file is
half written, or at a random time after the start (which also lands in start-up, forward/backward and the
optimizer step). Then ``--resume auto`` runs, and may itself be stopped, until a run exits 0. The run must end
with the same checkpoints as an uninterrupted run (final, best, epoch, the step checkpoints ``keep_last`` keeps),
each with equal model and optimizer tensors, and every train and validation loss in ``metrics.jsonl``, all bit for
bit; no temp file may be left, and each stop must end as documented: SIGKILL -9, SIGTERM 143 and SIGINT 130 with
``interrupted.pt`` saved (or 0 when the signal came during the last step).

Trials come in three kinds, in turn: the plain run; the same run under ``distributed: fsdp`` (one process, which
writes its step, epoch and interrupted checkpoints as ``.dcp`` directories through ``torch.distributed.checkpoint``,
compared tensor by tensor with an uninterrupted fsdp run's); and ``python -m lmfast.export`` of the finished run into
a folder that holds an earlier export, stopped while it writes, after which the folder must be the earlier export or
the new one, byte for byte, never a mix, and a second export must finish it.

The run is tiny (byte-level tokens from a generated ``.npy``, one layer of width 32, 24 steps, three epochs,
validation every 5 steps, a step checkpoint every 4 with ``keep_last: 2``), on one CPU thread: the process
start dominates, about 2 s a run. The child process runs ``lmfast.train.main`` with hooks that only mark where it
is (on stdout) and pause at the one moment chosen for the kill, so the kill lands there; they change no number.
``tests/train/test_reliability.py`` imports this file and runs a few kills in CI.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PAUSE = 0.5  # seconds the child holds still at the chosen moment; the kill lands inside this window
PHASES = ("step", "eval", "save", "random")
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
STEPS, EVAL_INTERVAL, CHECKPOINT_STEPS = 24, 5, 4
CONFIG = dict(vocab_size=256, context_length=16, d_model=32, num_layers=1, num_heads=2, d_ff=64, batch_size=4,
              max_steps=STEPS, warmup_iters=2, cosine_cycle_iters=STEPS, max_learning_rate=3e-3,
              min_learning_rate=1e-4, checkpoint_steps=CHECKPOINT_STEPS, keep_last=2, checkpoint_interval=1,
              eval_interval=EVAL_INTERVAL, eval_iters=4, log_interval=1, compile="false", progress=False,
              device="cpu", dtype="float32", backend="reference")
_KIND_CONFIG = {"plain": {}, "fsdp": {"distributed": "fsdp"}, "export": {}}
# the kill is aimed at a uniformly drawn occurrence of its phase in the process, up to these (a resumed process
# has fewer steps left; an occurrence that never comes is a kill not sent, counted apart)
OCCURRENCES = {"step": STEPS // 2, "eval": 3, "save": 6}


@dataclass
class Kill:
    """One planned stop: the signal, the moment, and which occurrence of it in the process."""

    signal: str
    phase: str
    occurrence: int = 1  # the n-th step / validation / checkpoint write of that process
    delay: float = 0.0  # seconds after the moment (random: after the start)


@dataclass
class Outcome:
    kill: Kill
    returncode: int
    landed: bool  # the moment came and the signal was sent
    interrupted_saved: bool = False
    where: str = ""
    kind: str = "plain"  # plain, fsdp or export


@dataclass
class TrialResult:
    outcomes: list[Outcome] = field(default_factory=list)
    runs: int = 0
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# The run


def make_data(root: Path) -> None:
    """Byte-level tokens (uint8 .npy) of a small generated text: 8 steps an epoch at batch 4 x 16."""
    import numpy as np

    rng = np.random.default_rng(0)
    words = ["to be", "or not", "that is", "the question", "whether", "tis nobler", "in the mind", "to suffer"]
    text = " ".join(rng.choice(words, 400)).encode()
    np.save(root / "train.npy", np.frombuffer(text[:8 * 64 + 1], dtype=np.uint8))
    np.save(root / "val.npy", np.frombuffer(text[-300:], dtype=np.uint8))


KINDS = ("plain", "fsdp", "export")


def write_config(root: Path, run_dir: Path, **overrides) -> Path:
    """``run_dir``'s config (beside it, as ``<run_dir>.yaml``): :data:`CONFIG` on the data :func:`make_data` wrote."""
    import yaml

    cfg = {**CONFIG, "train_data_path": str(root / "train.npy"), "val_data_path": str(root / "val.npy"),
           "checkpoint_dir": str(run_dir), "log_file": str(run_dir / "train.log"), "cache_dir": str(root / "cache"),
           **overrides}
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"  # tiny matrices: threads only add start-up time
    return env


def _start(args: list[str], kill: Kill | None, stderr, child: str = "--child") -> subprocess.Popen:
    cmd = [sys.executable, __file__, child, "--pause-at", f"{kill.phase}:{kill.occurrence}" if kill else "", "--",
           *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=_child_env(), preexec_fn=_default_signals)


def _default_signals() -> None:  # a harness started in the background may pass SIGINT on as ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass
class Process:
    returncode: int
    landed: bool  # the moment came and the signal was sent
    out: str  # the child's markers
    err: str


def run_once(config: Path, resume: bool, kill: Kill | None) -> Process:
    """One training process, stopped as ``kill`` says."""
    return _run_child(["--config", str(config), *(["--resume", "auto"] if resume else [])], kill, "--child")


def _run_child(args: list[str], kill: Kill | None, child: str) -> Process:
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: nothing blocks on a full pipe while we read stdout
        proc = _start(args, kill, err, child)
        landed, seen = _stop(proc, kill)
        out = seen + proc.stdout.read()
        proc.wait(timeout=600)
        proc.stdout.close()
        err.seek(0)
        return Process(proc.returncode, landed, out.decode(), err.read().decode(errors="replace"))


def _stop(proc: subprocess.Popen, kill: Kill | None) -> tuple[bool, bytes]:
    """Send ``kill``'s signal at its moment: (whether it was sent, as the process may finish first; stdout read)."""
    seen = b""
    if kill is not None and kill.phase == "random":
        try:
            proc.wait(timeout=kill.delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(SIGNALS[kill.signal])
            return True, seen
    elif kill is not None:
        for line in proc.stdout:
            seen += line
            if line.startswith(b"@pause"):
                time.sleep(kill.delay)
                proc.send_signal(SIGNALS[kill.signal])
                return True, seen
    return False, seen


def uninterrupted(root: Path, kind: str = "plain") -> Path:
    """The reference of a kind of trial: one run, never stopped (for exports: the plain run and its export)."""
    run_dir = root / ("reference-fsdp" if kind == "fsdp" else "reference")
    if (run_dir / "final_model.pt").is_file():
        return run_dir
    run = run_once(write_config(root, run_dir, **_KIND_CONFIG[kind]), False, None)
    if run.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed ({run.returncode}):\n{run.err[-3000:]}")
    return run_dir


def plan_kills(rng: random.Random, count: int, duration: float) -> list[Kill]:
    """``count`` kills with every signal and phase drawn uniformly; ``duration`` is one whole run's wall time."""
    kills = []
    for _ in range(count):
        phase = rng.choice(PHASES)
        delay = rng.uniform(0.2, duration) if phase == "random" else rng.uniform(0.0, 0.8 * PAUSE)
        kills.append(Kill(rng.choice(list(SIGNALS)), phase, rng.randint(1, OCCURRENCES.get(phase, 1)), delay))
    return kills


def run_trial(root: Path, name: str, reference: Path, kills: list[Kill], kind: str = "plain") -> TrialResult:
    """Start a fresh run, stop it with each of ``kills`` in turn (each on a new ``--resume auto``), finish it, and
    compare it with ``reference`` (the uninterrupted run of the same kind)."""
    if kind == "export":
        return export_trial(root, name, reference, kills)
    run_dir = root / name
    config = write_config(root, run_dir, **_KIND_CONFIG[kind])
    result, resume = TrialResult(), False
    for kill in kills:
        run = run_once(config, resume, kill)
        result.runs += 1
        saved = "interrupted.pt. Continue with" in run.err or "interrupted.dcp. Continue with" in run.err
        outcome = Outcome(kill, run.returncode, run.landed, interrupted_saved=saved)
        result.outcomes.append(outcome)
        result.problems += _check_exit(outcome, run)
        resume = True
        if run.returncode == 0:  # it finished first: the kills left have nothing to stop
            break
    else:
        run = run_once(config, resume, None)
        result.runs += 1
        if run.returncode != 0:
            result.problems.append(f"the last --resume auto exited {run.returncode}:\n{run.err[-2000:]}")
    if not result.problems:
        result.problems += compare_runs(reference, run_dir)
    return result


def _check_exit(o: Outcome, run: Process) -> list[str]:
    """The documented ending for each signal; a signal that came before lmfast installed its handlers (still
    importing torch) or after it restored them (the run over, the process exiting) ends the way Python ends."""
    sig, err = SIGNALS[o.kill.signal], run.err
    if not o.landed:
        o.where = "the run ended before the moment came"
        return [] if o.returncode == 0 else [f"{o.kill}: exited {o.returncode} without a kill:\n{err[-2000:]}"]
    if o.returncode == 0:
        o.where = "after the last step began (the run finished)"
        return []
    if sig == signal.SIGKILL:
        o.where = "killed"
        return [] if o.returncode == -9 else [f"{o.kill}: SIGKILL gave exit {o.returncode}"]
    if o.returncode == -sig and "@handlers" not in run.out:
        o.where = "during interpreter start-up, before lmfast's handlers"
        return []
    if o.returncode == -sig and "@restored" in run.out:
        o.where = "while the process exited, after lmfast restored the handlers"
        return []
    if o.returncode != 128 + sig:
        return [f"{o.kill}: exited {o.returncode}, expected {128 + sig}:\n{err[-2000:]}"]
    if "Traceback" in err:
        return [f"{o.kill}: a traceback on a stop:\n{err[-2000:]}"]
    o.where = "at a step boundary, interrupted saved" if o.interrupted_saved else "outside the training loop"
    return []


def compare_runs(reference: Path, run_dir: Path) -> list[str]:
    """What differs between two finished runs: the set of checkpoints and each one's model and optimizer tensors
    (``interrupted.pt`` aside, which only a stopped run has), the losses, leftover temp files."""
    import torch

    from lmfast.checkpoint import read_checkpoint

    want, have = ({p.name for p in [*d.glob("*.pt"), *d.glob("*.dcp")]} - {"interrupted.pt", "interrupted.dcp"}
                  for d in (reference, run_dir))
    problems = [f"{sorted(want - have)} missing, {sorted(have - want)} extra"] if want != have else []
    for name in sorted(want & have):
        read = _read_dcp if name.endswith(".dcp") else read_checkpoint
        a, b = read(reference / name), read(run_dir / name)
        for part in ("model", "optimizer"):
            flat_a, flat_b = _tensors(a[part]), _tensors(b[part])
            differ = [k for k in flat_a if k not in flat_b or not torch.equal(flat_a[k], flat_b[k])]
            if differ or flat_a.keys() != flat_b.keys():
                problems.append(f"{name} {part} differs from the uninterrupted run's: {differ[:3]}")
    for kind in ("loss", "val_loss"):
        ref, got = _series(reference, kind), _series(run_dir, kind)
        if ref != got:
            problems.append(f"metrics.jsonl {kind} differs: {_first_difference(ref, got)}")
    leftovers = [p.name for p in run_dir.iterdir() if ".tmp" in p.name]
    if leftovers:
        problems.append(f"temp files left in {run_dir}: {leftovers}")
    return problems


def _read_dcp(path: Path) -> dict:
    """Every tensor of a sharded checkpoint, by its flattened name under ``model`` and ``optimizer``: its files are
    checked against their sums and read without running code from them, as lmfast reads them."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from lmfast.train.dcp_files import safe_planner, safe_reader
    from lmfast.train.sharded import _single_process_is_meant, read_sharded

    _, checked = read_sharded(path)
    reader = safe_reader(path, checked)
    template = {fqn: torch.empty(md.size, dtype=md.properties.dtype)
                for fqn, md in reader.read_metadata().state_dict_metadata.items()
                if isinstance(md, TensorStorageMetadata)}
    with _single_process_is_meant():
        dcp.load(template, storage_reader=reader, planner=safe_planner(), no_dist=True)
    return {part: {k: v for k, v in template.items() if k.startswith(part + ".")} for part in ("model", "optimizer")}


# ---------------------------------------------------------------------------------------------------------------
# Exports


def export_trial(root: Path, name: str, reference: Path, kills: list[Kill]) -> TrialResult:
    """Export the reference run's final model into a folder holding an export of its best model, stopping the export
    with each of ``kills``: after each stop the folder is one of the two exports, byte for byte; a last export
    finishes it and leaves no temporary folder."""
    out, result = root / name / "exported", TrialResult()
    out.parent.mkdir(parents=True, exist_ok=True)
    old, new = (_export_once(reference / f"{m}_model.pt", root / f"reference-export-{m}") for m in ("best", "final"))
    _export_once(reference / "best_model.pt", out)  # the earlier export the folder holds
    for kill in kills:
        run = _run_child(["--checkpoint", str(reference / "final_model.pt"), "--out", str(out)], kill,
                         "--child-export")
        result.runs += 1
        outcome = Outcome(kill, run.returncode, run.landed)
        result.outcomes.append(outcome)
        result.problems += _check_export_exit(outcome, run)
        if _files(out) not in (old, new):
            result.problems.append(f"{kill}: {out} is neither the earlier export nor the new one: {_diff(out, old)}")
    _export_once(reference / "final_model.pt", out)
    result.runs += 1
    if _files(out) != new:
        result.problems.append(f"the last export left {out} unlike an uninterrupted one: {_diff(out, new)}")
    left = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    if left:
        result.problems.append(f"temporary folders left beside {out}: {left}")
    return result


def _export_once(checkpoint: Path, out: Path) -> dict:
    run = _run_child(["--checkpoint", str(checkpoint), "--out", str(out)], None, "--child-export")
    if run.returncode != 0:
        raise RuntimeError(f"export of {checkpoint} failed ({run.returncode}):\n{run.err[-3000:]}")
    return _files(out)


def _files(folder: Path) -> dict | None:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else None


def _diff(out: Path, want: dict) -> str:
    have = _files(out)
    if have is None:
        return "it does not exist"
    return f"files differ: {sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))}"


def _check_export_exit(o: Outcome, run: Process) -> list[str]:
    """SIGINT: 130 and one line (Ctrl-C), or Python's own ending while the child still imports torch, as for training;
    SIGTERM and SIGKILL end it as signals do; 0 if it finished first."""
    sig = SIGNALS[o.kill.signal]
    o.where = "the export finished first" if run.returncode == 0 else "stopped mid-export"
    if run.returncode == 0 or (sig != signal.SIGINT and run.returncode == -sig):
        return []
    if sig == signal.SIGINT and run.returncode == -sig and "@main" not in run.out:
        o.where = "during interpreter start-up, before lmfast's handlers"  # still importing torch: Python's ending
        return []
    if sig == signal.SIGINT and run.returncode == 130 and "Traceback" not in run.err:
        return []
    return [f"{o.kill}: the export exited {run.returncode}:\n{run.err[-2000:]}"]


def _tensors(tree, prefix="") -> dict:
    import torch

    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    return {k: v for key, sub in items for k, v in _tensors(sub, f"{prefix}/{key}").items()}


def _series(run_dir: Path, kind: str) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[kind]) for r in records if kind in r]


def _first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"record {i}: {x} vs {y}"
    return f"{len(a)} records vs {len(b)}"


# ---------------------------------------------------------------------------------------------------------------
# The child: lmfast.train with markers and one pause


def _child(pause_at: str, argv: list[str]) -> int:
    import torch

    from lmfast import data
    from lmfast.train import trainer

    phase, _, nth = pause_at.partition(":")
    seen = Counter()
    in_step = [False]

    def moment(kind: str) -> None:
        seen[kind] += 1
        if kind == phase and seen[kind] == int(nth):
            os.write(1, f"@pause {kind} {seen[kind]}\n".encode())
            time.sleep(PAUSE)  # a signal's handler runs inside the sleep, which then goes on

    real_step, real_eval, real_draw, real_save = trainer.Trainer.train_step, trainer.Trainer.evaluate, \
        data.BatchSampler.__call__, torch.save

    def train_step(self, step):
        in_step[0] = True
        try:
            return real_step(self, step)
        finally:
            in_step[0] = False

    def draw(self):
        batch = real_draw(self)
        if in_step[0]:
            moment("step")  # the batch of this step is drawn, nothing computed: the inexact Ctrl-C
        return batch

    def evaluate(self):
        moment("eval")
        return real_eval(self)

    def save(obj, f, *args, **kwargs):
        if not hasattr(f, "write"):
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        half = len(buf.getvalue()) // 2
        f.write(buf.getvalue()[:half])
        f.flush()
        moment("save")  # half of the temp file is on disk
        f.write(buf.getvalue()[half:])

    real_enter, real_exit = trainer.StopSignals.__enter__, trainer.StopSignals.__exit__

    def enter(self):
        entered = real_enter(self)
        os.write(1, b"@handlers\n")  # from here on SIGINT/SIGTERM are lmfast's to answer ...
        return entered

    def exit_(self, *exc):
        os.write(1, b"@restored\n")  # ... and from here on Python's again
        return real_exit(self, *exc)

    trainer.Trainer.train_step, trainer.Trainer.evaluate, data.BatchSampler.__call__ = train_step, evaluate, draw
    trainer.StopSignals.__enter__, trainer.StopSignals.__exit__ = enter, exit_
    torch.save = save
    return trainer.main(argv)


def _child_export(pause_at: str, argv: list[str]) -> int:
    """``lmfast.export.main`` with pauses: ``weights`` once model.safetensors is in the temporary folder, ``swap``
    just before the folder takes --out's place."""
    from lmfast import export

    phase, _, nth = pause_at.partition(":")
    real_save, real_replace = export._save_safetensors, export._replace_dir

    def moment(kind: str) -> None:
        if kind == phase:
            os.write(1, f"@pause {kind} {nth}\n".encode())
            time.sleep(PAUSE)

    def save(*args):
        real_save(*args)
        moment("weights")

    def replace(tmp, out):
        moment("swap")
        real_replace(tmp, out)

    export._save_safetensors, export._replace_dir = save, replace
    os.write(1, b"@main\n")  # from here on a Ctrl-C is export.main's to answer
    return export.main(argv)


# ---------------------------------------------------------------------------------------------------------------
# The long run


def plan_export_kills(rng: random.Random, count: int, duration: float) -> list[Kill]:
    """``count`` kills of an export: while its weights are written, just before the folder swap, or at a random time."""
    return [Kill(rng.choice(list(SIGNALS)), phase, 1, rng.uniform(0.0, 0.8 * PAUSE) if phase != "random" else
                 rng.uniform(0.2, duration)) for phase in (rng.choice(("weights", "swap", "random"))
                                                            for _ in range(count))]


def long_run(root: Path, kills: int, seed: int, max_per_trial: int = 3) -> dict:
    """Trials of 1..max_per_trial kills each, the kinds in turn, until ``kills`` signals have been sent; returns the
    figures."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    make_data(root)
    start = time.perf_counter()
    references = {kind: uninterrupted(root, kind) for kind in KINDS}
    duration = (time.perf_counter() - start) / 2
    sent, trials, outcomes, problems, runs = 0, 0, [], [], 2
    while sent < kills:
        kind = KINDS[trials % len(KINDS)]
        count = rng.randint(1, max_per_trial)
        plan = plan_export_kills(rng, count, 3.0) if kind == "export" else plan_kills(rng, count, duration)
        result = run_trial(root, f"trial-{trials:04d}-{kind}", references[kind], plan, kind)
        for o in result.outcomes:
            o.kind = kind
        trials += 1
        runs += result.runs
        outcomes += result.outcomes
        sent += sum(o.landed for o in result.outcomes)
        problems += [f"trial-{trials - 1:04d}: {p}" for p in result.problems]
        print(f"trial {trials}: {len(result.outcomes)} stopped, {sent}/{kills} sent, "
              f"{'OK' if not result.problems else 'FAILED: ' + ' | '.join(result.problems)}", file=sys.stderr,
              flush=True)
    return {"trials": trials, "runs": runs, "outcomes": outcomes, "problems": problems, "seconds":
            time.perf_counter() - start, "reference_seconds": duration, "seed": seed, "kills": kills,
            "trial_names": [f"trial-{i:04d}-{KINDS[i % len(KINDS)]}" for i in range(trials)]}


def report(figures: dict) -> str:
    """The long run's figures as Markdown."""
    import platform

    import torch

    outcomes = figures["outcomes"]
    landed = [o for o in outcomes if o.landed]
    table = Counter((o.kind, o.kill.signal, o.kill.phase) for o in landed)
    where = Counter((o.kind, o.kill.signal, o.where) for o in landed)
    trials_of = Counter(name.rsplit("-", 1)[-1] for name in figures.get("trial_names", []))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from _machine import commit, cpu_name

    made_from = os.environ.get("LMFAST_COMMIT") or commit()  # a snapshot outside git names its commit this way
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# Kill and resume: a CPU run stopped at random moments equals a run never stopped",
        "",
        f"Command: `nice python scripts/kill_resume.py --kills {figures['kills']} --seed {figures['seed']}`. "
        f"Machine: {cpu_name()} ({os.cpu_count()} cores, shared with other jobs: load average (1, 5, 15 min) "
        f"at the end {load}); Python {platform.python_version()}, torch {torch.__version__}; commit {made_from}.",
        "",
        f"- {len(landed)} signals sent in {figures['trials']} trials ({figures['runs']} processes, "
        f"{figures['seconds'] / 60:.1f} min; one uninterrupted run takes {figures['reference_seconds']:.1f} s) "
        f"({', '.join(f'{n} {kind}' for kind, n in trials_of.items())}): plain runs, runs under `distributed: "
        "fsdp` (one process, `.dcp` training checkpoints) and exports into a folder holding an earlier export",
        f"- trials whose checkpoints (every one, model and optimizer tensors, `.pt` and `.dcp`) and losses equal the "
        f"uninterrupted run's bitwise, or whose export folder was always the earlier or the new export byte for byte: "
        f"**{figures['trials'] - len({p.split(':')[0] for p in figures['problems']})} of {figures['trials']}**",
        f"- problems: {len(figures['problems'])}",
        "",
        "| kind | signal | inside a step | during validation | during a checkpoint write | while the export writes "
        "its weights | just before the export's folder swap | at a random time |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    phases = ("step", "eval", "save", "weights", "swap", "random")
    for kind in KINDS:
        for sig in SIGNALS:
            lines.append(f"| {kind} | {sig} | " + " | ".join(str(table[(kind, sig, p)]) for p in phases) + " |")
    lines += ["", "| kind | signal | how the process ended | count |", "|---|---|---|---:|"]
    lines += [f"| {kind} | {sig} | {w} | {n} |" for (kind, sig, w), n in sorted(where.items())]
    if figures["problems"]:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in figures["problems"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--child"], ["--child-export"]):
        pause_at = argv[argv.index("--pause-at") + 1]
        return (_child if argv[0] == "--child" else _child_export)(pause_at, argv[argv.index("--") + 1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=120, help="signals to send in all (default 120)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/lmfast-kill-resume", help="where the runs go (default %(default)s)")
    parser.add_argument("--out", help="write the figures as Markdown here")
    args = parser.parse_args(argv)
    figures = long_run(Path(args.workdir), args.kills, args.seed)
    text = report(figures)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if not figures["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
