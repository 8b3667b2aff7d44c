"""scripts/mutate.py's table stays in step with the code: each planted bug still finds its text, and its tests exist.

Running the mutations takes ~40 minutes, so it is not part of the suite; this check is, so a move or an edit that
makes a mutation stale (it would then be reported ``stale``, never ``caught``) fails here at once.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("lmfast_mutate_table", ROOT / "scripts" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


MUTATE = _module()
MUTATIONS = MUTATE.MUTATIONS


def test_the_mutation_table_is_not_empty():
    assert len(MUTATIONS) >= 40


@pytest.mark.parametrize("m", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_each_mutation_finds_its_text_once_and_names_tests_that_exist(m):
    path = ROOT / m.file
    assert path.is_file(), f"{m.file} does not exist"
    assert path.read_text(encoding="utf-8").count(m.old) == 1, f"the mutated text is not found exactly once in {m.file}"
    assert m.tests
    for test in m.tests:
        file, _, name = test.partition("::")
        assert (ROOT / file).is_file(), f"{file} does not exist"
        if name:
            assert f"def {name.split('[')[0]}(" in (ROOT / file).read_text(), f"{test} names no test function"


def test_the_report_says_whether_the_baseline_passed_or_was_skipped():
    rows = [("m", "caught", "t::x", 1.0)]
    assert MUTATE._table(rows).splitlines()[1].startswith("Baseline: not run (--no-baseline)")
    assert "Baseline: all 3 test files" in MUTATE._table(rows, "Baseline: all 3 test files/ids ... passed")
