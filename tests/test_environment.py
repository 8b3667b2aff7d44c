"""What the suite needs is really installed, so no area of it turns itself off in silence.

Without the C++ extension every native-tokenizer test skips (or drops its native case), without Triton every
kernel test skips, and without the test extra's oracles the equivalence tests against them would skip; each of
these fails here instead, with the line that fixes it.
"""

from __future__ import annotations

import importlib
import sys

import pytest

LINUX = sys.platform.startswith("linux")


def _import_or_fail(module: str, without_it: str, fix: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{module} does not import ({e}), so {without_it}; {fix}")


@pytest.mark.skipif(not LINUX, reason="the extension is required on Linux; elsewhere the Python engine may stand in")
def test_the_cpp_tokenizer_extension_is_built_on_linux():
    _import_or_fail("lmfast._bpe", "every native tokenizer test would be skipped",
                    "rebuild it with `pip install -e .` (needs a C++17 compiler)")
    from lmfast.tokenizer import native_available

    assert native_available()


@pytest.mark.skipif(not LINUX, reason="triton is a dependency on Linux only")
def test_triton_is_installed_on_linux():
    _import_or_fail("triton", "every kernel test would be skipped", "it is a dependency on Linux: `pip install -e .`")


@pytest.mark.parametrize("module", ["tiktoken", "tokenizers", "transformers", "hypothesis", "matplotlib"])
def test_the_test_extras_oracles_are_installed(module):
    _import_or_fail(module, "the tests that use it as an oracle would be skipped", "pip install -e \".[test]\"")
