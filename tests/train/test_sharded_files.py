"""A sharded (``.dcp``) checkpoint is read without running code from it and checked by content before use: a crafted
``.metadata`` or small value is refused before it can call anything, a flipped bit, a truncated, deleted or garbage
file is one error naming it, and generate and export take a ``.dcp`` as they take a ``.pt``.

The run is scripts/kill_resume.py's tiny config under ``distributed: fsdp`` in one process (which writes its
training checkpoints the sharded way), 8 steps with a checkpoint every 4."""

import io
import os
import pickle
import re
import shutil
import zlib
from pathlib import Path

import pytest
import torch
from _scripts import load_script

from lmfast import export, generate
from lmfast.train import trainer as trainer_module
from lmfast.train.checkpoint import atomic_torch_save, checksummed, load_checked
from lmfast.train.dcp_files import read_metadata, safe_planner

ROOT = Path(__file__).resolve().parents[2]
kill_resume = load_script("kill_resume")

pytestmark = pytest.mark.usefixtures("one_thread")
STEP = "checkpoint_step_4.dcp"


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    kill_resume.make_data(root)
    config = kill_resume.write_config(root, root / "run", distributed="fsdp", max_steps=8, eval_interval=0)
    assert trainer_module.main(["--config", str(config)]) == 0
    return root


class _Payload:
    """A pickle that runs ``touch marker`` when it is loaded by anything that runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _copy(fsdp_run: Path, name: str) -> Path:
    run_dir = fsdp_run / name
    shutil.copytree(fsdp_run / "run", run_dir)
    return run_dir


def _resume(fsdp_run: Path, run_dir: Path, capsys, checkpoint: str = STEP) -> tuple[int, str]:
    config = kill_resume.write_config(fsdp_run, run_dir, distributed="fsdp", max_steps=8, eval_interval=0)
    capsys.readouterr()
    code = trainer_module.main(["--config", str(config), "--resume", str(run_dir / checkpoint)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip().splitlines()[-1]


def _rewrite_sums(checkpoint: Path) -> None:
    """Make run_state.pt's file table match the files as they are now, as someone crafting them would."""
    state = load_checked(checkpoint / "run_state.pt")
    for name in state["files"]:
        data = (checkpoint / name).read_bytes()
        state["files"][name] = [len(data), zlib.crc32(data)]
    atomic_torch_save(checksummed(state), checkpoint / "run_state.pt")


@pytest.mark.parametrize("sums_match", [False, True], ids=["sums-differ", "sums-recomputed"])
def test_a_metadata_pickle_that_calls_os_system_is_refused_without_running_it(fsdp_run, capsys, sums_match):
    run_dir = _copy(fsdp_run, f"crafted-metadata-{sums_match}")
    marker = run_dir / "code-ran"
    (run_dir / STEP / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    if sums_match:
        _rewrite_sums(run_dir / STEP)
    code, line = _resume(fsdp_run, run_dir, capsys)
    assert code == 2 and not marker.exists(), line
    expected = "names posix.system" if sums_match else r"\.metadata has \d+ bytes but was written with 1\d,\d{3}"
    assert re.search(expected, line), line


def test_a_small_value_in_a_shard_that_carries_code_is_loaded_with_weights_only(tmp_path):
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        safe_planner().load_bytes(None, buffer)
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    ("flip-shard", "__0_0.distcp differs from the checksum saved with it"),
    ("flip-metadata-header", ".metadata differs from the checksum saved with it"),
    ("flip-run-state", "run_state.pt is corrupt"),
    ("truncate-shard", "__0_0.distcp has 205,894 bytes but was written with 411,788"),
    ("delete-shard", "lacks __0_0.distcp, which was written with it"),
    ("garbage-metadata", "cannot be read as DCP metadata"),
])
def test_a_damaged_sharded_checkpoint_is_refused_with_one_line_naming_the_file(fsdp_run, capsys, damage, message):
    run_dir = _copy(fsdp_run, f"damaged-{damage}")
    checkpoint = run_dir / STEP
    shard, metadata, run_state = checkpoint / "__0_0.distcp", checkpoint / ".metadata", checkpoint / "run_state.pt"
    if damage.startswith("flip"):
        target = {"flip-shard": shard, "flip-metadata-header": metadata, "flip-run-state": run_state}[damage]
        data = bytearray(target.read_bytes())
        at = 2 if damage == "flip-metadata-header" else len(data) // 2 + 1000
        data[at] ^= 0x10
        target.write_bytes(bytes(data))
    elif damage == "truncate-shard":
        shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
    elif damage == "delete-shard":
        shard.unlink()
    else:
        metadata.write_bytes(b"\x80\x04not a pickle at all")
        _rewrite_sums(checkpoint)
    code, line = _resume(fsdp_run, run_dir, capsys)
    assert code == 2 and line.startswith("error: ") and message in line and str(checkpoint) in line, line


def test_a_sharded_checkpoints_metadata_reads_without_plain_pickle(fsdp_run):
    metadata = read_metadata(fsdp_run / "run" / STEP / ".metadata")
    assert "model.lm_head.weight" in metadata.state_dict_metadata


def test_generate_and_export_take_a_sharded_checkpoint_as_they_take_the_same_steps_plain_file(fsdp_run, capsys):
    run_dir = fsdp_run / "run"
    texts = []
    for checkpoint in ("checkpoint_step_8.dcp", "final_model.pt"):  # the same model at step 8
        args = ["--checkpoint", str(run_dir / checkpoint), "--temperature", "0", "--max-new-tokens", "12", "--json"]
        assert generate.main(args) == 0
        texts.append(capsys.readouterr().out)
        assert export.main(["--checkpoint", str(run_dir / checkpoint), "--out", str(fsdp_run / checkpoint)]) == 0
        capsys.readouterr()
    assert texts[0].split('"checkpoint"')[0] == texts[1].split('"checkpoint"')[0]
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (fsdp_run / "checkpoint_step_8.dcp" / name).read_bytes() == (fsdp_run / "final_model.pt" / name
                                                                            ).read_bytes()
