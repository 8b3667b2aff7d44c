"""What the suite needs is really installed, so no area of it turns itself off in silence.

Without the C++ extension every native-tokenizer test skips (or drops its native case), without Triton every
kernel test skips, and without the test extra's oracles the equivalence tests against them would skip; each of
these fails here instead, with the line that fixes it.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

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
