"""Hostile input to the trainer: every case stops with one line on stderr naming the problem and the fix, exit code 2,
never a traceback, and (where it matters) before anything is built or written.

The runs are in-process calls of ``lmfast.train.main`` on a tiny config; two subprocess runs check the same end to end
on a real stderr. A read-only place is a real one where permission bits stop this user, and a simulated read-only
filesystem (EROFS from every write under it) where they do not (root); a full disk is a tiny tmpfs where one can be
mounted, else writes that fail with ENOSPC.
"""

import builtins
import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lmfast.checkpoint import CheckpointWriteError, read_checkpoint, save_checkpoint
from lmfast.model import TransformerLM
from lmfast.train import run_setup as _run_setup
from lmfast.train import trainer as trainer_module
from lmfast.train.config import TrainConfig
from lmfast.train.memory import count_parameters, estimate_training_memory

TINY = dict(vocab_size=256, context_length=16, d_model=32, num_layers=1, num_heads=2, d_ff=64, batch_size=4,
            max_steps=2, warmup_iters=1, cosine_cycle_iters=2, checkpoint_interval=0, log_interval=1, eval_iters=1,
            compile="false", progress=False, device="cpu")


@pytest.fixture
def run(tmp_path, capsys):
    """``run(*args, **overrides)`` trains the tiny config in-process; returns (exit code, last stderr line)."""
    (tmp_path / "train.txt").write_text("to be or not to be, that is the question\n" * 40)

    def _run(*args, **overrides):
        cfg = {**TINY, "train_data_path": str(tmp_path / "train.txt"), "val_data_path": None,
               "checkpoint_dir": str(tmp_path / "ck"), "log_file": None, "cache_dir": str(tmp_path / "cache"),
               **overrides}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        capsys.readouterr()
        code = trainer_module.main(["--config", str(tmp_path / "config.yaml"), *args])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        return code, lines[-1] if lines else ""

    _run.dir = tmp_path
    return _run


def _expect_refusal(run, fragment, *args, **overrides):
    code, last = run(*args, **overrides)
    assert code == 2 and last.startswith("error: ") and fragment in last, last
    return last


# ---------------------------------------------------------------------------------------------------------------
# Devices and backends


@pytest.mark.parametrize("args, overrides, fragment", [
    (["--device", "cuda:abc"], {}, "device must be auto, cpu, cuda, cuda:N or mps"),
    (["--device", "cuda:-1"], {}, "got 'cuda:-1'"),
    (["--device", "tpu"], {}, "got 'tpu'"),
    ([], dict(backend="fused"), "backend: fused cannot run here"),
])
def test_a_bad_device_or_backend_is_one_line(run, args, overrides, fragment):
    _expect_refusal(run, fragment, *args, **overrides)


def test_resolve_device_turns_torchs_invalid_device_string_into_a_setup_error():
    with pytest.raises(_run_setup.SetupError, match="'cuda:abc' is not a device"):
        _run_setup.resolve_device("cuda:abc")


# ---------------------------------------------------------------------------------------------------------------
# Run and log paths


def _simulate_read_only(monkeypatch, root: Path) -> None:
    """Writes under ``root`` fail with EROFS, as on a read-only mount (permission bits do not stop root)."""
    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def under(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and Path(os.fspath(path)).resolve().is_relative_to(root)

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def fake_open(file, mode="r", *a, **k):
        if under(file) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *a, **k)

    def fake_mkdir(path, *a, **k):
        if under(path):
            refuse(path)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A directory this process cannot write into: really (chmod) for a normal user, simulated for root."""
    d = tmp_path / "read-only"
    d.mkdir()
    d.chmod(0o555)
    if os.access(d, os.W_OK):
        _simulate_read_only(monkeypatch, d.resolve())
    yield d
    d.chmod(0o755)


@pytest.mark.parametrize("key, fragment", [
    ("checkpoint_dir", "checkpoint_dir '{p}' is not writable"),
    ("cache_dir", "cache_dir '{p}' is not writable"),
    ("log_file", "log_file '{p}' cannot be opened for appending"),
])
def test_a_read_only_run_path_is_refused_before_training(run, read_only_dir, key, fragment):
    path = read_only_dir / "x"
    _expect_refusal(run, fragment.format(p=path), **{key: str(path)})
    assert not list(run.dir.glob("ck/*.pt")) and not (run.dir / "cache").exists()  # refused before any work


@pytest.mark.parametrize("key, fragment", [
    ("checkpoint_dir", "checkpoint_dir '{p}' is a file, not a directory"),
    ("cache_dir", "cache_dir '{p}' is a file, not a directory"),
    ("log_file", "log_file '{p}/sub.log' cannot be opened: '{p}' is a file, not a directory"),
])
def test_a_file_where_a_run_directory_belongs_is_refused(run, key, fragment):
    f = run.dir / "a-file"
    f.write_text("not a directory")
    value = f"{f}/sub.log" if key == "log_file" else str(f)
    _expect_refusal(run, fragment.format(p=f), **{key: value})


def test_a_directory_as_log_file_is_refused(run):
    (run.dir / "logs").mkdir()
    _expect_refusal(run, "log_file '{}' is a directory".format(run.dir / "logs"), log_file=str(run.dir / "logs"))


def test_two_fresh_runs_archiving_in_the_same_second_keep_both(tmp_path, monkeypatch):
    monkeypatch.setattr(_run_setup.time, "strftime", lambda fmt, *a: "previous-20260101-000000")
    for text in ("first", "second", "third"):
        (tmp_path / "final_model.pt").write_text(text)
        _run_setup._archive_earlier_run(tmp_path)
    kept = sorted(p.parent.name for p in tmp_path.glob("previous-*/final_model.pt"))
    assert kept == ["previous-20260101-000000", "previous-20260101-000000-2", "previous-20260101-000000-3"]
    assert (tmp_path / "previous-20260101-000000-3" / "final_model.pt").read_text() == "third"


# ---------------------------------------------------------------------------------------------------------------
# Sizes


@pytest.mark.parametrize("overrides", [
    dict(batch_size=10**8), dict(vocab_size=10**10), dict(d_model=2**24, num_heads=2), dict(d_ff=10**12),
    dict(num_layers=10**8), dict(context_length=10**9),
])
def test_a_model_or_batch_that_cannot_fit_is_refused_with_the_numbers_before_building(run, monkeypatch, overrides):
    def never(*a, **k):
        raise AssertionError("the model was built before the memory check")

    monkeypatch.setattr(trainer_module, "TransformerLM", never)
    last = _expect_refusal(run, "this config needs about", **overrides)
    assert " GiB to train, but " in last and " free: " in last and "parameters take" in last


@pytest.mark.parametrize("target, fragment", [("missing.pt", "does not exist"), (".", "is a directory")])
def test_a_resume_path_that_is_no_checkpoint_is_refused_before_tokenizing(run, monkeypatch, tmp_path, target,
                                                                           fragment):
    def never(*a, **k):
        raise AssertionError("the tokenizer was built before --resume was checked")

    monkeypatch.setattr(trainer_module, "build_tokenizer", never)
    _expect_refusal(run, fragment, "--resume", str(tmp_path / target))


def test_the_parameter_count_matches_the_model():
    model = TransformerLM(300, 16, 48, 3, 4, 80, 10000.0, backend="reference")
    assert count_parameters(300, 48, 3, 80) == model.num_parameters()


@pytest.mark.parametrize("fused_loss", [True, False])
def test_the_memory_estimate_is_within_a_factor_of_two_of_a_real_steps_peak_rss(tmp_path, fused_loss):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to measure one step's peak RSS")
    # 2,048 tokens at vocab 32,768: unfused logits take 3 x 256 MiB, the fused loss two chunks of 1,024 tokens
    cfg = dict(vocab_size=32768, context_length=128, d_model=128, num_layers=2, num_heads=4, d_ff=384, batch_size=16,
               fused_loss=fused_loss)
    code = textwrap.dedent(f"""
        import torch
        from lmfast.model import TransformerLM
        from lmfast.optim import AdamW

        def step(model, opt, x):
            model(x, targets=x, fused_loss=c["fused_loss"]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        c = {cfg!r}
        x = torch.randint(0, c["vocab_size"], (c["batch_size"], c["context_length"]))
        tiny = TransformerLM(c["vocab_size"], 8, 16, 1, 2, 32, 10000.0, backend="reference")
        step(tiny, AdamW(tiny.parameters()), x[:1, :8])  # torch's one-time buffers are not the config's
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
        model = TransformerLM(c["vocab_size"], c["context_length"], c["d_model"], c["num_layers"], c["num_heads"],
                              c["d_ff"], 10000.0, backend="reference")
        step(model, AdamW(model.parameters()), x)
        peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
        print((peak - before) * 1024)
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = int(proc.stdout.split()[-1])
    estimate = estimate_training_memory(TrainConfig(**cfg)).total
    assert measured / 2 <= estimate <= measured * 2, (estimate, measured)


# ---------------------------------------------------------------------------------------------------------------
# Config text and the command line


@pytest.mark.parametrize("args, fragment", [
    (["--set", "max_steps=[1"], "--set 'max_steps=[1': the value of 'max_steps' is not valid YAML"),
    (["--set", "seed=99999999999999999999999"], "seed: 99999999999999999999999 is too large"),
    (["--set", "d_model=63"], "d_model (63) is odd"),
    (["--set", "batch_size=1e999"], "batch_size: cannot use"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_config_text_is_one_line_naming_the_key(run, args, fragment):
    _expect_refusal(run, fragment, *args)


def test_set_takes_several_pairs_like_repeated_set():
    args = trainer_module._parse_args(["--set", "seed=3", "max_steps=5", "--set", "batch_size=2"])
    assert args.overrides == ["seed=3", "max_steps=5", "batch_size=2"]


def test_a_config_file_that_is_a_directory_or_not_utf8_is_named(run, tmp_path):
    code, last = run("--config", str(tmp_path))  # the later --config wins
    assert code == 2 and f"config file '{tmp_path}' is a directory" in last
    (tmp_path / "latin1.yaml").write_bytes("seed: 1  # caf\xe9\n".encode("latin-1"))
    code, last = run("--config", str(tmp_path / "latin1.yaml"))
    assert code == 2 and "latin1.yaml' is not UTF-8 text (byte 0xe9 at offset 14)" in last


# ---------------------------------------------------------------------------------------------------------------
# Files


def test_a_directory_given_as_data_is_called_a_directory(run):
    (run.dir / "x.txt").mkdir()
    _expect_refusal(run, "is a directory, and it holds no .jsonl", train_data_path=str(run.dir / "x.txt") + "/")


def test_a_directory_given_to_resume_is_called_a_directory(run):
    (run.dir / "ck").mkdir()
    _expect_refusal(run, "is a directory; pass a .pt file in it", "--resume", str(run.dir / "ck"))


def test_a_truncated_npy_names_the_file_and_both_sizes(run):
    path = run.dir / "t.npy"
    np.save(path, np.arange(1000, dtype=np.uint16))
    path.write_bytes(path.read_bytes()[:900])
    last = _expect_refusal(run, f"{path} is truncated", train_data_path=str(path))
    assert "1,000 uint16 ids (2,128 bytes) but the file has 900 bytes" in last


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless, but a global like os.system: what weights_only refuses


def test_a_code_carrying_checkpoint_is_refused_with_torchs_warning_in_full(run):
    torch.save({"model": _Evil(), "step": 1}, run.dir / "evil.pt")
    last = _expect_refusal(run, "was refused: it holds Python objects other than tensors", "--resume",
                           str(run.dir / "evil.pt"))
    assert "arbitrary code execution" in last and last.endswith("trusted source.\"")


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """A directory on a disk with no room: a 64 KiB tmpfs where this process may mount one, else ENOSPC writes."""
    d = tmp_path / "full"
    d.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True).returncode == 0
    if not mounted:
        real_fdopen, root = os.fdopen, d.resolve()

        class _NoRoom:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

        def fdopen(fd, mode="r", *a, **k):
            f = real_fdopen(fd, mode, *a, **k)
            return _NoRoom(f) if "w" in mode and Path(f"/proc/self/fd/{fd}").resolve().is_relative_to(root) else f

        monkeypatch.setattr(os, "fdopen", fdopen)
    yield d
    if mounted:
        subprocess.run(["umount", str(d)], check=True)


def test_a_full_disk_during_a_checkpoint_save_says_so_and_keeps_the_old_file(full_disk):
    model = TransformerLM(256, 16, 64, 2, 2, 128, 10000.0, backend="reference")  # ~0.6 MB: more than 64 KiB
    path = full_disk / "c.pt"
    path.write_bytes(b"the previous checkpoint")
    with pytest.raises(CheckpointWriteError, match="No space left on device.*free some space"):
        save_checkpoint(model, None, 1, path)
    assert path.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in full_disk.iterdir()] == ["c.pt"]  # no temp file left behind


def test_a_full_disk_during_training_is_one_line_and_exit_2(run, full_disk):
    _expect_refusal(run, "cannot write checkpoint", checkpoint_dir=str(full_disk / "ck"), d_model=64)


def test_a_garbage_checkpoint_is_called_unreadable_not_malicious(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read .*truncated, corrupt, or not a torch checkpoint"):
        read_checkpoint(tmp_path / "bad.pt")


# ---------------------------------------------------------------------------------------------------------------
# End to end, on a real stderr


@pytest.mark.parametrize("args", [["--set", "num_layers=100000000"], ["--set", "max_steps=[1", "--device", "cpu"]])
def test_the_command_line_prints_one_error_line_and_no_traceback(tmp_path, args):
    proc = subprocess.run([sys.executable, "-m", "lmfast.train", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
