"""What the suite needs is really installed, so no area of it turns itself off in silence.

Without the C++ extension every native-tokenizer test skips (or drops its native case), without Triton every
kernel test skips, and without the test extra's oracles the equivalence tests against them would skip; each of
these fails here instead, with the line that fixes it.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

LINUX = sys.platform.startswith("linux")
ROOT = Path(__file__).resolve().parent.parent


def _import_or_fail(module: str, without_it: str, fix: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{module} does not import ({e}), so {without_it}; {fix}")


@pytest.mark.skipif(not LINUX, reason="the extension is required on Linux; elsewhere the Python engine may stand in")
def test_the_cpp_tokenizer_extension_is_built_on_linux():
    _import_or_fail("lmfast.tokenizer._bpe", "every native tokenizer test would be skipped",
                    "rebuild it with `pip install -e .` (needs a C++17 compiler)")
    from lmfast.tokenizer import native_available

    assert native_available()


@pytest.mark.skipif(not LINUX, reason="triton is a dependency on Linux only")
def test_triton_is_installed_on_linux():
    _import_or_fail("triton", "every kernel test would be skipped", "it is a dependency on Linux: `pip install -e .`")


@pytest.mark.parametrize("module", ["tiktoken", "tokenizers", "transformers", "hypothesis", "matplotlib"])
def test_the_test_extras_oracles_are_installed(module):
    _import_or_fail(module, "the tests that use it as an oracle would be skipped", "pip install -e \".[test]\"")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_pin_every_dependency_ci_installs():
    # CI installs under constraints.txt (.ci/run); a dependency added to pyproject.toml without a pin there would
    # float to whatever release is newest on the day CI runs.
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [*project["build-system"]["requires"], *project["project"]["dependencies"],
              *project["project"]["optional-dependencies"]["test"]]
    names = {_normalized(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]) for spec in wanted}
    pinned = {_normalized(line.split("==")[0]) for line in (ROOT / "constraints.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    assert names, "no dependencies read from pyproject.toml"
    assert sorted(names - pinned) == [], "add these to constraints.txt (bash scripts/test_newest.sh --update)"


def test_only_the_gpu_marker_skips_a_test_not_a_folder_named_gpu(tmp_path):
    # tests/conftest.py skips gpu-marked tests without CUDA. It once asked item.keywords, which also holds the names
    # of the folders above a test, so in a checkout folder named gpu every test was skipped.
    tests = tmp_path / "gpu" / "tests"
    tests.mkdir(parents=True)
    (tests / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    (tests / "test_sample.py").write_text("import pytest\n\n\ndef test_plain():\n    pass\n\n\n"
                                          "@pytest.mark.gpu\ndef test_marked():\n    pass\n")
    (tmp_path / "gpu" / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA GPU\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests"],
                          cwd=tmp_path / "gpu", capture_output=True, text=True, timeout=300)
    expected = "2 passed" if torch.cuda.is_available() else "1 passed, 1 skipped"
    assert expected in proc.stdout, proc.stdout + proc.stderr
