"""lmfast imports the same way wherever users run it, and claims no top-level name the ecosystem uses.

``python -m`` and ``python -c`` put the working directory first on ``sys.path``, so from the repository root every
top-level folder competes with installed packages of the same name. The kernels folder is ``kernels/`` there and
Hugging Face's ``kernels`` (which transformers requires) is installed beside us: the folder must never win.
Each check runs in a fresh interpreter started the way users start one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, cwd: Path, **env: str) -> str:
    """Run ``python -c code`` in ``cwd`` (first on sys.path, as for a user) and return its stdout."""
    full_env = {**os.environ, **env}
    full_env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"python -c in {cwd} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_repo_kernels_folder_is_not_a_regular_package():
    # A kernels/__init__.py would make the folder shadow Hugging Face's `kernels` from the repo root.
    assert (ROOT / "kernels" / "attention.py").exists()
    assert not (ROOT / "kernels" / "__init__.py").exists()


def test_import_kernels_from_the_repo_root_gives_an_installed_kernels_package(tmp_path):
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("WHO = 'the installed stand-in'\n")
    out = _python("import kernels; print(kernels.WHO, kernels.__file__)", ROOT, PYTHONPATH=str(site))
    assert out.startswith("the installed stand-in " + str(site))


def test_lmfast_kernels_imports_from_the_repo_root_and_is_the_repo_folder():
    out = _python("import lmfast.kernels.rmsnorm as m, lmfast; print(m.__file__); print(lmfast.__file__)", ROOT)
    kernel_file, package_file = out.split()
    assert Path(kernel_file) == ROOT / "kernels" / "rmsnorm.py"
    assert Path(package_file) == ROOT / "lmfast" / "__init__.py"


def test_an_uninstalled_copy_imports_its_own_lmfast_kernels(tmp_path):
    copy = tmp_path / "copy"
    for folder in ("lmfast", "kernels"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    code = ("import lmfast.kernels.attention as a, lmfast.kernels.adamw as w, lmfast.functional as f; "
            "print(a.__file__); print(w.__file__); print(f.__file__)")
    for line in _python(code, copy).split():
        assert Path(line).is_relative_to(copy), f"{line} was imported from outside the copy"


def test_transformers_llama_runs_from_the_repo_root():
    pytest.importorskip("transformers")
    code = (
        "import torch, kernels\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,"
        " num_attention_heads=2)\n"
        "logits = LlamaForCausalLM(cfg)(torch.tensor([[1, 2, 3]])).logits\n"
        "print(tuple(logits.shape), kernels.__file__)\n"
    )
    shape, kernels_file = _python(code, ROOT).split(") ")
    assert shape == "(1, 3, 64"
    assert not Path(kernels_file.strip()).is_relative_to(ROOT / "kernels")


def test_no_code_in_the_repo_imports_the_top_level_kernels_name():
    pattern = re.compile(r"^\s*(from\s+kernels[\s.]|import\s+kernels\b)", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for folder in ("lmfast", "kernels", "tests", "benchmarks", "scripts")
                 for p in (ROOT / folder).rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == [], f"these import `kernels` (Hugging Face's name); use lmfast.kernels: {offenders}"
