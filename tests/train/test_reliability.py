"""A run survives its stops: one run per directory, SIGINT/SIGTERM/kill -9 at any moment resume to the very run
never stopped (bitwise on CPU), nothing stale is reused, nothing a kill left behind stays, and every ending says
what to do next.

The runs are scripts/kill_resume.py's tiny config (byte-level .npy, 24 steps of a one-layer model, 3 epochs,
validation every 5 steps, a step checkpoint every 4 with keep_last 2) on one thread, as its child processes use."""

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from _scripts import load_script
from _torchrun import torchrun

from lmfast.checkpoint import read_checkpoint
from lmfast.data import BatchSampler, prepare_tokens
from lmfast.data import cache as _cache
from lmfast.plot import read_metrics
from lmfast.train import trainer as trainer_module
from lmfast.train.lifecycle import LOCK_NAME, lock_run_dir
from lmfast.train.run_state import find_resume

ROOT = Path(__file__).resolve().parents[2]
kill_resume = load_script("kill_resume")


# The harness's children run on one thread; bitwise comparisons with them need the same here.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    kill_resume.make_data(root)
    return root


@pytest.fixture(scope="module")
def reference(data):
    """One uninterrupted run (in this process, on one thread, as the harness's children run)."""
    torch.set_num_threads(1)
    assert _train(data, "reference") == 0
    return data / "reference"


def _train(root: Path, name: str, *args: str, **overrides) -> int:
    return trainer_module.main(["--config", str(kill_resume.write_config(root, root / name, **overrides)), *args])


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return kill_resume._series(run_dir, "loss")


def _last_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# -- one run per directory -----------------------------------------------------------------------------------


def test_a_second_run_on_a_checkpoint_dir_in_use_is_refused_at_once_naming_the_holder(data, capsys):
    run_dir = data / "locked"
    holder = lock_run_dir(run_dir)
    try:
        assert _train(data, "locked") == 2
        line = _last_error_line(capsys)
        assert str(run_dir) in line and f"PID {os.getpid()}" in line and "in use by another training run" in line
        written = {p.name: p.stat().st_size for p in run_dir.iterdir() if p.name != LOCK_NAME}
        assert written == {"train.log": 0}  # refused before writing anything (the log file is opened, empty)
    finally:
        holder.release()
    assert _train(data, "locked") == 0  # the lock file left behind blocks no one


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_the_run_lock_never_writes_through_a_link_or_into_a_non_file_planted_at_its_name(tmp_path, kind):
    run_dir, target = tmp_path / "run", tmp_path / "precious.txt"
    run_dir.mkdir()
    target.write_text("the user's file")
    {"symlink": lambda p: p.symlink_to(target), "hardlink": lambda p: os.link(target, p),
     "fifo": os.mkfifo}[kind](run_dir / LOCK_NAME)
    with pytest.raises(trainer_module.SetupError, match=f"{LOCK_NAME}' is .*not the run lock .*remove it"):
        lock_run_dir(run_dir)
    assert target.read_text() == "the user's file"


# -- stopping and resuming -----------------------------------------------------------------------------------


def test_resume_auto_takes_the_latest_step_not_the_latest_modification_time(data, reference):
    run_dir = data / "touched"
    shutil.copytree(reference, run_dir)
    for name in ("final_model.pt", "checkpoint_epoch_3.pt"):
        (run_dir / name).unlink()
    os.utime(run_dir / "checkpoint_step_20.pt")  # `touch`, or a copy without -p: the older checkpoint looks newest
    assert find_resume("auto", run_dir) == run_dir / "checkpoint_step_24.pt"


def _signal_inside_step(monkeypatch, signum: int, step: int) -> None:
    """Send ``signum`` to this process after step ``step``'s batch is drawn, and again while interrupted.pt is
    being written (a second Ctrl-C, or torchrun passing the terminal's on)."""
    real_step, real_draw, real_save = trainer_module.Trainer.train_step, BatchSampler.__call__, trainer_module.save_run

    def draw_then_signal(sampler):
        batch = real_draw(sampler)
        os.kill(os.getpid(), signum)
        return batch

    def train_step(self, s):
        if s + 1 != step:
            return real_step(self, s)
        monkeypatch.setattr(BatchSampler, "__call__", draw_then_signal)
        try:
            return real_step(self, s)
        finally:
            monkeypatch.setattr(BatchSampler, "__call__", real_draw)

    def save_run(run, path):
        if path.name == "interrupted.pt":
            os.kill(os.getpid(), signum)
        return real_save(run, path)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", train_step)
    monkeypatch.setattr(trainer_module, "save_run", save_run)


def _unhandled(signum, frame):
    raise AssertionError(f"{signal.Signals(signum).name} reached the test: lmfast did not handle it")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_finishes_the_step_saves_and_resumes_to_the_uninterrupted_run(
        data, reference, monkeypatch, capsys, signum, code):
    name = f"stopped-{signum}"
    _signal_inside_step(monkeypatch, signum, step=6)
    previous = signal.signal(signum, _unhandled)
    try:
        assert _train(data, name) == code
    finally:
        signal.signal(signum, previous)
    monkeypatch.undo()
    assert "--resume auto" in capsys.readouterr().err
    assert read_checkpoint(data / name / "interrupted.pt")["step"] == 6  # the step the signal came in finished
    assert _train(data, name, "--resume", "auto") == 0
    assert kill_resume.compare_runs(reference, data / name) == []  # weights, optimizer and losses, bitwise


def test_a_second_ctrl_c_while_the_stopped_run_shuts_down_is_acknowledged_not_a_traceback(data, monkeypatch, capfd):
    _signal_inside_step(monkeypatch, signal.SIGINT, step=2)
    real_shutdown = trainer_module.shutdown

    def shutdown():  # torchrun passes the terminal's Ctrl-C on: the repeat can come while the process group closes
        os.kill(os.getpid(), signal.SIGINT)
        real_shutdown()

    monkeypatch.setattr(trainer_module, "shutdown", shutdown)
    previous = signal.signal(signal.SIGINT, _unhandled)
    try:
        assert _train(data, "late-ctrl-c") == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "SIGINT again: already stopping" in capfd.readouterr().err  # written with os.write(2, ...)


def test_resuming_a_finished_run_exits_0_and_says_there_is_nothing_left_to_do(data, reference, caplog):
    run_dir = data / "finished"
    shutil.copytree(reference, run_dir)
    final = (run_dir / "final_model.pt").read_bytes()
    assert _train(data, "finished", "--resume", "auto") == 0
    assert "Nothing left to do" in caplog.text
    assert (run_dir / "final_model.pt").read_bytes() == final


def test_a_kill_after_the_last_step_checkpoint_still_leaves_the_final_model_and_every_checkpoint(data, reference):
    """kill -9 after checkpoint_step_24.pt was written, while the last epoch checkpoint was (found by the harness)."""
    run_dir = data / "last-step"
    shutil.copytree(reference, run_dir)
    for name in ("final_model.pt", "checkpoint_epoch_3.pt"):
        (run_dir / name).unlink()
    assert _train(data, "last-step", "--resume", "auto") == 0
    assert kill_resume.compare_runs(reference, run_dir) == []
    written, expected = (read_checkpoint(d / "checkpoint_epoch_3.pt")["model"] for d in (run_dir, reference))
    assert all(torch.equal(written[k], v) for k, v in expected.items())


def test_metrics_after_a_resume_hold_each_step_once(data, reference):
    run_dir = data / "metrics"
    shutil.copytree(reference, run_dir)
    assert _train(data, "metrics", "--resume", str(run_dir / "checkpoint_step_20.pt")) == 0
    steps = [s for s, _ in _losses(run_dir)]
    assert steps == list(range(1, 25))
    assert _losses(run_dir) == _losses(reference)
    assert kill_resume._series(run_dir, "val_loss") == kill_resume._series(reference, "val_loss")


def test_a_metrics_line_that_is_not_utf8_does_not_block_a_resume_and_is_named(data, reference, caplog):
    run_dir = data / "metrics-bytes"
    shutil.copytree(reference, run_dir)
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines(keepends=True)
    metrics.write_bytes(b"".join(lines[:3]) + b'{"step": 3, "loss": \xff\xfe}\n' + b"".join(lines[3:]))
    with pytest.raises(ValueError, match=f"{metrics}:4 is not UTF-8 text"):
        read_metrics(run_dir)
    assert _train(data, "metrics-bytes", "--resume", str(run_dir / "checkpoint_step_20.pt")) == 0
    assert f"{metrics}: dropped 1 line(s) that are not UTF-8 text" in caplog.text
    assert _losses(run_dir) == _losses(reference)


def test_plot_reads_each_step_once_and_skips_a_line_cut_short(tmp_path):
    records = [dict(step=s, loss=float(s), lr=1e-3, tokens_per_s=1.0) for s in (1, 2, 3, 2, 3, 4)]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "lo'
    (tmp_path / "metrics.jsonl").write_text(text)
    train_records, _ = read_metrics(tmp_path)
    assert [r["step"] for r in train_records] == [1, 2, 3, 4]


# -- housekeeping ------------------------------------------------------------------------------------------------


def test_keep_last_keeps_the_newest_step_checkpoints_and_every_other_kind(reference):
    names = {p.name for p in reference.glob("*.pt")}
    assert {n for n in names if n.startswith("checkpoint_step_")} == {"checkpoint_step_20.pt", "checkpoint_step_24.pt"}
    assert {"best_model.pt", "final_model.pt", "checkpoint_epoch_1.pt", "checkpoint_epoch_3.pt"} <= names


def test_temp_files_a_kill_left_in_the_run_dir_are_removed_at_the_next_start_and_only_ours(data):
    run_dir = data / "leftovers"
    run_dir.mkdir()
    ours = [".checkpoint_step_4.pt.k2j4x9a1.tmp", ".metrics.jsonl.ab12cd34.tmp", ".config.yaml.q1w2e3r4.tmp",
            ".tokenizer.zz9y8x7w.tmp"]
    for name in ours[:3]:
        (run_dir / name).write_bytes(b"half a checkpoint")
    (run_dir / ours[3]).mkdir()
    (run_dir / ours[3] / "vocab.json").write_text("{")
    theirs = [".notes.tmp", "scratch.tmp", ".checkpoint_step_4.pt"]
    for name in theirs:
        (run_dir / name).write_text("the user's")
    assert _train(data, "leftovers") == 0
    left = {p.name for p in run_dir.iterdir()}
    assert not left & set(ours) and set(theirs) <= left


def test_temp_files_a_kill_left_in_the_token_cache_are_removed_unless_their_writer_is_alive(tmp_path, monkeypatch):
    import fcntl

    monkeypatch.setattr(_cache, "_swept", set())
    for target in ("a-0123.npy", "b-4567.npy"):
        (tmp_path / f".{target}.lock").touch()
        (tmp_path / f".{target}.x1y2z3w4.tmp.npy").write_bytes(b"half")
        (tmp_path / f".{target}.x1y2z3w4.tmp.npy.q9r8s7t6.tmp").write_bytes(b"half")  # encode_file's own temp
    (tmp_path / ".unrelated.tmp").write_bytes(b"not ours: no lock file names it")
    with open(tmp_path / ".b-4567.npy.lock", "a+b") as alive:
        fcntl.flock(alive.fileno(), fcntl.LOCK_EX)  # a process still writing b
        _cache._resolve_cache(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir() if "tmp" in p.name)
    assert left == [".b-4567.npy.x1y2z3w4.tmp.npy", ".b-4567.npy.x1y2z3w4.tmp.npy.q9r8s7t6.tmp", ".unrelated.tmp"]


# -- nothing stale ------------------------------------------------------------------------------------------------


def test_the_token_cache_never_serves_old_tokens_for_a_file_rewritten_with_the_same_size_and_mtime(tmp_path):
    text = tmp_path / "t.txt"
    text.write_bytes(b"the first text, " * 64)
    first = np.load(prepare_tokens(text, None, tmp_path / "cache", progress=False))
    stat = text.stat()
    text.write_bytes(b"other text,here " * 64)  # as cp -p / rsync -t / tar leave it: same size, same mtime
    os.utime(text, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (text.stat().st_size, text.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    second = np.load(prepare_tokens(text, None, tmp_path / "cache", progress=False))
    assert bytes(first) == b"the first text, " * 64 and bytes(second) == b"other text,here " * 64


def test_a_trained_tokenizer_is_not_reused_for_other_training_text(tmp_path, capsys, caplog):
    text = tmp_path / "train.txt"
    text.write_text("to be or not to be, that is the question\n" * 40)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({**kill_resume.CONFIG, "train_data_path": str(text), "val_data_path": None,
                                  "tokenizer": "train", "vocab_size": 300, "max_steps": 1, "log_file": None,
                                  "checkpoint_dir": str(tmp_path / "ck"), "cache_dir": str(tmp_path / "cache")}))
    assert trainer_module.main(["--config", str(config)]) == 0
    text.write_text("all the world's a stage, and all the men\n" * 40)
    capsys.readouterr()
    assert trainer_module.main(["--config", str(config)]) == 2
    line = _last_error_line(capsys)
    assert "trained on other text" in line and str(tmp_path / "ck" / "tokenizer") in line
    # the run's own tokenizer, with a warning
    assert trainer_module.main(["--config", str(config), "--resume", "auto"]) == 0
    assert "The training text changed since this run's tokenizer was trained" in caplog.text


# -- a diverged loss -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nan_at, names", [(3, "no checkpoint was saved before it"),
                                           (5, "checkpoint_step_4.pt (step 4)")])
def test_a_nan_loss_names_a_checkpoint_only_if_one_exists_and_what_to_change(data, monkeypatch, capsys, nan_at, names):
    real_step = trainer_module.Trainer.train_step

    def train_step(self, s):
        loss, norm, lr = real_step(self, s)
        return (torch.tensor(float("nan")) if s + 1 == nan_at else loss), norm, lr

    monkeypatch.setattr(trainer_module.Trainer, "train_step", train_step)
    assert _train(data, f"nan-{nan_at}") == 1
    line = _last_error_line(capsys)
    assert f"loss became nan at step {nan_at}" in line and names in line and "lower max_learning_rate" in line
    if nan_at == 5:
        assert (data / f"nan-{nan_at}" / "checkpoint_step_4.pt").is_file()


# -- the harness ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_sigterm_and_sigint_at_chosen_moments_then_resume_auto_equal_the_uninterrupted_run(data, reference):
    """Two trials, three kills: kill -9 with a checkpoint's temp file half written, then SIGTERM inside a step of
    the resumed run; SIGINT during validation. (scripts/kill_resume.py runs 100+ of these by hand.)"""
    trials = [[kill_resume.Kill("SIGKILL", "save", 3, 0.1), kill_resume.Kill("SIGTERM", "step", 9, 0.1)],
              [kill_resume.Kill("SIGINT", "eval", 2, 0.1)]]
    for i, kills in enumerate(trials):
        result = kill_resume.run_trial(data, f"harness-{i}", reference, kills)
        assert result.problems == []
        assert [o.returncode for o in result.outcomes] == [{"SIGKILL": -9, "SIGTERM": 143, "SIGINT": 130}[k.signal]
                                                           for k in kills]


@pytest.mark.slow
def test_kills_of_an_fsdp_run_and_of_an_export_leave_sharded_checkpoints_and_the_export_folder_whole(data, reference):
    """kill -9 while a .dcp checkpoint is half written, then SIGTERM inside a step, of a run under distributed: fsdp
    (one process: sharded training checkpoints); kill -9 while an export writes its weights and Ctrl-C just before
    its folder replaces the earlier export."""
    fsdp = [kill_resume.Kill("SIGKILL", "save", 2, 0.1), kill_resume.Kill("SIGTERM", "step", 5, 0.1)]
    result = kill_resume.run_trial(data, "harness-fsdp", kill_resume.uninterrupted(data, "fsdp"), fsdp, "fsdp")
    assert result.problems == [] and [o.returncode for o in result.outcomes] == [-9, 143]
    assert (data / "harness-fsdp" / "checkpoint_step_24.dcp" / "run_state.pt").is_file()  # compared tensor by tensor
    export = [kill_resume.Kill("SIGKILL", "weights", 1, 0.1), kill_resume.Kill("SIGINT", "swap", 1, 0.1)]
    result = kill_resume.run_trial(data, "harness-export", reference, export, "export")
    assert result.problems == [] and [o.returncode for o in result.outcomes] == [-9, 130]


_STOP_RANK_1 = """
import os, signal, sys
from lmfast.train import trainer as trainer_module

real_step = trainer_module.Trainer.train_step

def train_step(self, s):
    if s + 1 == 5 and self.dist.rank == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # only rank 1 is told to stop, at the start of step 5
    return real_step(self, s)

trainer_module.Trainer.train_step = train_step
sys.exit(trainer_module.main(sys.argv[1:]))
"""


def _torchrun(data: Path, script: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    config = kill_resume.write_config(data, data / name, max_steps=8, checkpoint_steps=0)
    return torchrun([str(script), "--config", str(config), *args], cwd=data, timeout=600)


@pytest.mark.slow
def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_after_the_same_step_and_resumes_exactly(data, tmp_path):
    stop_rank_1, plain = tmp_path / "stop_rank_1.py", tmp_path / "plain.py"
    stop_rank_1.write_text(_STOP_RANK_1)
    plain.write_text("import sys\nfrom lmfast.train import main\nsys.exit(main(sys.argv[1:]))\n")
    assert _torchrun(data, plain, "ddp-reference").returncode == 0
    stopped = _torchrun(data, stop_rank_1, "ddp-stopped")
    assert stopped.returncode != 0 and stopped.stderr.count("stopped after step 5 of 8") == 1  # rank 0 says so
    assert 'lmfast/train/trainer.py", line' not in stopped.stderr  # no rank's traceback (torchrun prints its own)
    state = read_checkpoint(data / "ddp-stopped" / "interrupted.pt")
    assert state["step"] == 5 and len(state["data"]) == 2  # both ranks' sampler states, gathered at step 5
    resumed = _torchrun(data, plain, "ddp-stopped", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert kill_resume.compare_runs(data / "ddp-reference", data / "ddp-stopped") == []
