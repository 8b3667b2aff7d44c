"""Stage a of benchmarks/gpu_check.py: which tests a GPU runs, split over several pytest processes, and their counts
read from pytest's output as it streams.

The GPU machine has no pytest-xdist, and stage a pays ~150-200 cold Triton compiles (1.5-3 s each, CPU-bound) and a
few torch.compile graphs: run one after another they take 6-8 minutes. So the tests run as ``GPU_TEST_SHARDS``
pytest processes side by side on the one GPU, each given whole test functions (``file::function``), the heaviest
first onto the lightest process. A process killed at the stage's cap writes no summary and no junit XML; with ``-v``
pytest prints each test's outcome as it finishes, and :func:`count_streamed` reads those lines.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_TEST_SHARDS = 8  # pytest processes, side by side on the one GPU: cold compiles are CPU-bound (16 cores)


def _is_kernel_file(path: Path, tests: Path) -> bool:
    return path.name.startswith("test_kernel_") or "kernels" in path.relative_to(tests).parts[:-1]


def _gpu_marked(node: ast.AST) -> bool:
    """A ``pytestmark = ...gpu...`` line or a test function under ``@pytest.mark.gpu`` (read, not text-searched: a
    test may hold ``mark.gpu`` in a string)."""
    if isinstance(node, ast.Assign):
        return any(ast.unparse(t) == "pytestmark" for t in node.targets) and "mark.gpu" in ast.unparse(node.value)
    return isinstance(node, ast.FunctionDef) and any("mark.gpu" in ast.unparse(d) for d in node.decorator_list)


def gpu_test_functions(root: Path = ROOT) -> list[tuple[str, int]]:
    """(``file::function``, weight) of every test a GPU runs in stage a: every test function of a kernel test file
    (``tests/**/test_kernel_*.py`` or a file under a ``kernels`` folder, at any depth: on a GPU their unmarked tests,
    odd shapes, bad input, CUDA's dtype rule, run the kernels natively) and the gpu-marked ones of any other test
    file. The weight, for balancing the processes: the parametrized cases, three times over for a gpu-marked or
    torch.compile test (real sizes, cold compiles)."""
    tests, groups = root / "tests", []
    for path in sorted(tests.glob("**/test_*.py")):
        tree = ast.parse(path.read_text())
        module_gpu = any(_gpu_marked(n) for n in tree.body if isinstance(n, ast.Assign))
        kernel_file = _is_kernel_file(path, tests)
        for node in tree.body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
                continue
            gpu = module_gpu or _gpu_marked(node)
            if gpu or kernel_file:
                heavy = gpu or "compile" in node.name
                groups.append((f"{path.relative_to(root).as_posix()}::{node.name}",
                               _cases(node.decorator_list) * (3 if heavy else 1)))
    return groups


def gpu_test_files(root: Path = ROOT) -> list[str]:
    """The test files stage a takes tests from (see :func:`gpu_test_functions`)."""
    return sorted({name.split("::")[0] for name, _ in gpu_test_functions(root)})


def _cases(decorators: list[ast.expr]) -> int:
    """How many cases ``@pytest.mark.parametrize`` decorators make (1 for a list that is not written out)."""
    cases = 1
    for d in decorators:
        if isinstance(d, ast.Call) and ast.unparse(d.func).endswith("parametrize") and len(d.args) >= 2:
            values = d.args[1]
            cases *= len(values.elts) if isinstance(values, (ast.List, ast.Tuple)) else 1
    return cases


def gpu_test_shards(root: Path = ROOT, shards: int = GPU_TEST_SHARDS) -> list[list[str]]:
    """Stage a's tests as ``shards`` disjoint lists of test functions, heaviest first onto the lightest shard."""
    loads = [[0, i, []] for i in range(shards)]
    for group, weight in sorted(gpu_test_functions(root), key=lambda g: (-g[1], g[0])):
        lightest = min(loads)
        lightest[0] += weight
        lightest[2].append(group)
    return [sorted(ids) for _, _, ids in sorted(loads, key=lambda x: x[1]) if ids]


PYTEST_ARGS = ["-m", "not slow", "-p", "no:cacheprovider", "-v", "-rfE", "--tb=short"]


def collect_only(cmd: list[str]) -> list[str]:
    """``cmd`` (a pytest command) only collecting, at the verbosity that lists test ids and ``N tests collected``."""
    verbosity = sum(1 for a in cmd if a in ("-v", "--verbose")) - sum(1 for a in cmd if a in ("-q", "--quiet"))
    return [*cmd, "--collect-only", *(["-q"] * (verbosity + 1))]


def gpu_test_commands(root: Path = ROOT) -> list[list[str]]:
    """Stage a's pytest commands, one per shard, as gpu_check runs them (from the repository root)."""
    return [[sys.executable, "-m", "pytest", *PYTEST_ARGS, *ids] for ids in gpu_test_shards(root)]


_OUTCOME = re.compile(r"^(\S+?::.+?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.MULTILINE)
_RANK = {"PASSED": 0, "SKIPPED": 0, "XFAIL": 0, "XPASS": 1, "FAILED": 2, "ERROR": 3}  # a teardown ERROR follows PASSED


def count_streamed(text: str) -> dict:
    """Counts of one ``pytest -v`` run from its output so far: a run killed at its cap has no summary line nor junit
    XML, but ``-v`` has printed each finished test's outcome as it went.

    Returns selected (collected less deselected; None before collection ends), passed / failed / errors / skipped
    (each test once, by its worst outcome), not_run (selected but never finished), the test cut while running (``-v``
    prints a test's id when it starts and its outcome when it ends), collection errors, the failures (failed and
    erroring tests, with pytest's message where its summary got printed) and whether pytest finished (its closing
    ``== ... in 1.2s ==`` line).
    """
    outcome: dict[str, str] = {}
    for node, word in _OUTCOME.findall(text):
        if node not in outcome or _RANK[word] > _RANK[outcome[node]]:
            outcome[node] = word
    lines = text.rstrip().splitlines()
    last = lines[-1].strip() if lines else ""
    running = last if "::" in last and not _OUTCOME.match(last) and " - " not in last else None
    collected = re.search(r"^(?:collecting \.\.\. )?collected (\d+) items?(?: / (\d+) deselected)?", text,
                          re.MULTILINE)
    selected = int(collected.group(1)) - int(collected.group(2) or 0) if collected else None
    words = list(outcome.values())
    counts = {w.lower(): words.count(w) for w in ("PASSED", "FAILED", "SKIPPED", "XFAIL", "XPASS")}
    messages = dict(re.findall(r"^(?:FAILED|ERROR) (\S+?::.+?) - (.*)$", text, re.MULTILINE))
    return {"selected": selected, **counts, "errors": words.count("ERROR"),
            "not_run": None if selected is None else max(0, selected - len(outcome)),
            "cut_while_running": running,
            "collection_errors": sorted(set(re.findall(r"^_+ ERROR collecting (\S+) _+$", text, re.MULTILINE))),
            "failures": [f"{n}: {messages[n][:300]}" if n in messages else n for n, w in outcome.items()
                         if w in ("FAILED", "ERROR")],
            "finished": bool(re.search(r"^=+ .* in [\d.]+s(?: \(.*\))? =+$", text, re.MULTILINE))}


def count_collected(text: str) -> dict:
    """Tests collected and collection errors of one ``pytest --collect-only -qq`` run."""
    found = re.search(r"^(\d+)(?:/\d+)? tests? collected", text, re.MULTILINE)
    errors = re.search(r"^\d+(?:/\d+)? tests? collected.*?(\d+) errors?", text, re.MULTILINE) or re.search(
        r"^(?:no tests collected|!+ Interrupted)[^\n]*?(\d+) errors?", text, re.MULTILINE)
    collection_errors = sorted(set(re.findall(r"^_+ ERROR collecting (\S+) _+$", text, re.MULTILINE)))
    usage_errors = re.findall(r"^ERROR: (.*)$", text, re.MULTILINE)  # e.g. file or directory not found
    return {"collected": int(found.group(1)) if found else 0,
            "errors": max(int(errors.group(1)) if errors else 0, len(collection_errors)) + len(usage_errors),
            "collection_errors": collection_errors + usage_errors}
