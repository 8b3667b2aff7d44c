"""What a run writes and says beyond checkpoints: config.yaml and --print-config, the log inside checkpoint_dir (and a
full disk under it), warnings for keys that have no effect, the keys in --help and the closest ones for a typo."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmfast.train import trainer as trainer_module
from lmfast.train.config import ConfigError, load_config, parse_overrides

TINY = dict(vocab_size=256, context_length=16, d_model=32, num_layers=1, num_heads=2, d_ff=64, batch_size=4,
            max_steps=2, warmup_iters=1, cosine_cycle_iters=2, checkpoint_interval=0, log_interval=1, eval_iters=1,
            compile="false", progress=False, device="cpu", val_data_path=None)


@pytest.fixture
def run(tmp_path, capsys, monkeypatch):
    """``run(*args, **overrides) -> (exit code, stdout, stderr)`` of the tiny config, in-process, from tmp_path."""
    (tmp_path / "train.txt").write_text("to be or not to be, that is the question\n" * 40)
    monkeypatch.chdir(tmp_path)

    def _run(*args, **overrides):
        cfg = {**TINY, "train_data_path": str(tmp_path / "train.txt"), "checkpoint_dir": "ck",
               "cache_dir": str(tmp_path / "cache"), **overrides}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        capsys.readouterr()
        code = trainer_module.main(["--config", str(tmp_path / "c.yaml"), *args])
        out = capsys.readouterr()
        assert "Traceback" not in out.err and "Logging error" not in out.err
        return code, out.out, out.err

    return _run


def test_print_config_prints_the_resolved_config_and_builds_nothing(run, tmp_path):
    code, out, _ = run("--print-config", "--set", "seed=7")
    assert code == 0 and not (tmp_path / "ck").exists()
    printed = yaml.safe_load(out)
    assert printed["seed"] == 7 and printed["d_model"] == 32 and printed["weight_decay"] == 0.1  # a default filled in
    assert load_config(None, printed).to_dict() == printed


def test_a_run_writes_its_resolved_config_beside_its_checkpoints_and_a_fresh_run_archives_it(run, tmp_path):
    assert run("--set", "seed=7")[0] == 0
    written = yaml.safe_load((tmp_path / "ck" / "config.yaml").read_text())
    assert written["seed"] == 7 and load_config(None, written).to_dict() == written
    assert run("--set", "seed=8")[0] == 0
    assert yaml.safe_load((tmp_path / "ck" / "config.yaml").read_text())["seed"] == 8
    assert [yaml.safe_load(p.read_text())["seed"] for p in (tmp_path / "ck").glob("previous-*/config.yaml")] == [7]


def test_a_relative_log_file_goes_inside_checkpoint_dir(run, tmp_path):
    assert run("--set", "checkpoint_dir=other")[0] == 0
    assert (tmp_path / "other" / "training.log").stat().st_size > 0 and not (tmp_path / "training.log").exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux), a file no write fits into")
def test_a_full_disk_under_log_file_stops_the_run_with_one_line_not_a_traceback_per_line(run):
    code, _, err = run(log_file="/dev/full")
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: cannot write log_file '/dev/full' (No space")


@pytest.mark.parametrize("key", ["checkpoint_dir", "cache_dir", "log_file"])
def test_an_empty_path_is_refused_instead_of_meaning_the_current_directory(run, tmp_path, key):
    code, _, err = run(**{key: ""})
    assert code == 2 and f"error: {key} is empty" in err and sorted(os.listdir(tmp_path)) == ["c.yaml", "train.txt"]


def test_learning_rate_set_beside_the_schedule_warns_naming_the_key_that_applies(run):
    code, _, err = run("--print-config", "--set", "learning_rate=3e-4")
    assert code == 0 and "warning: learning_rate (0.0003) is not used" in err and "set max_learning_rate" in err
    assert "warning" not in run("--print-config", "--set", "learning_rate=3e-4", "use_lr_schedule=false")[2]


def test_an_abbreviated_key_names_the_closest_few_not_every_key():
    with pytest.raises(ConfigError) as e:
        load_config(None, parse_overrides(["lr=1e-3"]))
    assert "did you mean 'learning_rate', 'max_learning_rate' or 'min_learning_rate'?" in str(e.value)
    assert "vocab_size" not in str(e.value)


def test_help_lists_every_key_and_names_the_console_script_it_was_started_as(tmp_path):
    script = Path(sys.executable).parent / "lmfast-train"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: lmfast-train ")
    text = " ".join(proc.stdout.split())
    assert all(key in text for key in ("learning_rate", "max_learning_rate", "sample_top_p", "--print-config"))


@pytest.mark.parametrize("name", ["generate", "export", "plot", "tokenize", "eval"])
def test_every_console_script_names_itself_in_its_help(tmp_path, name):
    script = Path(sys.executable).parent / f"lmfast-{name}"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: lmfast-{name} "), proc.stdout[:200]
