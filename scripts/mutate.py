"""Plant realistic bugs in lmfast one at a time and check that the tests catch each one: a mutation table.

    python scripts/mutate.py                   # every mutation; exit 1 if any is missed, stale or broken
    python scripts/mutate.py --list            # the mutations, their files and the tests meant to catch them
    python scripts/mutate.py -k adamw -k clip  # only the mutations whose name contains one of these

Each mutation is a small source edit, ``(file, old text, new text)``, and the tests that should catch it. The
script copies the tracked tree (plus the built ``lmfast.tokenizer._bpe``) into a temporary folder, so the working
tree is never touched, checks that those tests pass there unmutated (the baseline: if any fails, nothing is run, as a
test that fails anyway would count its mutations as caught; the report says the baseline passed, or that it was skipped
with ``--no-baseline``), then for each mutation applies it, runs its tests with ``pytest -x`` and puts the file back.
The copy is imported first (``PYTHONPATH`` and the working directory
point at it; ``lmfast.kernels`` finds the copy's ``kernels/`` as in any source tree). A mutation of ``csrc/``
rebuilds the extension in the copy (about a minute on 2 cores) and restores the built one afterwards.

A mutation whose ``old`` text is not found exactly once is reported ``stale`` (the code moved; update the
mutation), never as caught. ``missed`` means every test passed with the bug in place: add a test that fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutation:
    name: str  # "<module>: what is wrong", as a user would describe the bug
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids (files or file::test); the first failure counts as caught


TRAIN_MATH = "tests/train/test_trainer_math.py"
RESUME = ("tests/train/test_train.py::test_resume_continues_the_same_loss_curve", TRAIN_MATH)
RELIABILITY = "tests/train/test_reliability.py"
SHARDED = "tests/train/test_sharded_files.py"
REUSED = "tests/train/test_reused_artifacts.py"
LCE = "tests/model/test_linear_cross_entropy.py"
OPTIM = "tests/train/test_optim.py"
MODEL = ("tests/model/test_model.py", "tests/cli/test_generate.py")

MUTATIONS = [
    # ---- trainer (lmfast/train/trainer.py)
    Mutation("trainer: each step uses the next step's learning rate", "lmfast/train/trainer.py",
             "lr = self.lr_at(step)", "lr = self.lr_at(step + 1)", (TRAIN_MATH,)),
    Mutation("trainer: the lr is set on the first parameter group only", "lmfast/train/trainer.py",
             "for group in self.optimizer.param_groups:\n            group[\"lr\"] = lr",
             "for group in self.optimizer.param_groups[:1]:\n            group[\"lr\"] = lr", (TRAIN_MATH,)),
    Mutation("trainer: micro-batch losses summed instead of averaged", "lmfast/train/trainer.py",
             "loss = self._loss(x, y) / accum", "loss = self._loss(x, y)",
             (TRAIN_MATH,)),
    Mutation("trainer: one micro-batch reused for every accumulation step", "lmfast/train/trainer.py",
             "x, y = self.sampler()", "x, y = self.sampler() if i == 0 else (x, y)", (TRAIN_MATH,)),
    Mutation("trainer: the logged loss is the last micro-batch's", "lmfast/train/trainer.py",
             "total += loss.detach()", "total = loss.detach() * accum", (TRAIN_MATH,)),
    Mutation("trainer: the clip threshold grows with accumulation", "lmfast/train/trainer.py",
             "max_norm = self.cfg.grad_clip_norm if",
             "max_norm = self.cfg.grad_clip_norm * accum if", (TRAIN_MATH,)),
    Mutation("trainer: RMSNorm gains are weight-decayed too", "lmfast/train/trainer.py",
             "decay = [p for p in self.model.parameters() if p.dim() >= 2]\n"
             "        no_decay = [p for p in self.model.parameters() if p.dim() < 2]",
             "decay = [p for p in self.model.parameters() if p.dim() >= 1]\n"
             "        no_decay = [p for p in self.model.parameters() if p.dim() < 1]", (TRAIN_MATH,)),
    Mutation("trainer: weight_decay hard-coded instead of read from the config", "lmfast/train/trainer.py",
             "\"weight_decay\": self.cfg.weight_decay}", "\"weight_decay\": 0.1}", (TRAIN_MATH,)),
    Mutation("trainer: betas from the config ignored", "lmfast/train/trainer.py",
             "betas=self.cfg.betas", "betas=(0.9, 0.999)", (TRAIN_MATH,)),
    Mutation("trainer: tokens per step forget the accumulation steps", "lmfast/train/trainer.py",
             "c.batch_size * c.context_length * c.gradient_accumulation_steps", "c.batch_size * c.context_length",
             (TRAIN_MATH,)),
    Mutation("trainer: validation draws new batches at every evaluation", "lmfast/train/trainer.py",
             "seed=[self.cfg.seed, 1])", "seed=None)", (TRAIN_MATH,)),
    Mutation("trainer: validation draws from the training data", "lmfast/train/trainer.py",
             "sampler = BatchSampler(self.val_data,", "sampler = BatchSampler(self.train_data,", (TRAIN_MATH,)),
    # ---- schedule (lmfast/train/optim.py: cosine_lr)
    Mutation("schedule: warmup reaches the peak one step late", "lmfast/train/optim.py",
             "return max_lr * it / warmup_iters", "return max_lr * it / (warmup_iters + 1)", (OPTIM,)),
    Mutation("schedule: the cosine spans the whole cycle, warmup included", "lmfast/train/optim.py",
             "progress = (it - warmup_iters) / span", "progress = it / cosine_cycle_iters", (OPTIM,)),
    Mutation("schedule: decays to 0 instead of min_lr", "lmfast/train/optim.py",
             "return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)",
             "return 0.5 * (1.0 + math.cos(math.pi * progress)) * max_lr", (OPTIM,)),
    # ---- optimizer (lmfast/train/optim.py: AdamW, clipping)
    Mutation("adamw: bias correction one step ahead", "lmfast/train/optim.py",
             "steps.append(int(state[\"step\"].item()))", "steps.append(int(state[\"step\"].item()) + 1)",
             (OPTIM,)),
    Mutation("adamw: a group's own weight_decay ignored", "lmfast/train/optim.py",
             "weight_decay=group[\"weight_decay\"]", "weight_decay=self.defaults[\"weight_decay\"]",
             (OPTIM,)),
    Mutation("adamw: L2-coupled decay (torch's fused Adam) instead of decoupled", "lmfast/train/optim.py",
             "torch._fused_adamw_(params", "torch._fused_adam_(params", (OPTIM,)),
    Mutation("adamw: eps added inside the square root (per-tensor path)", "lmfast/train/optim.py",
             "denom = (v.sqrt() / bc2_sqrt).add_(eps)", "denom = (v / bc2_sqrt**2).add_(eps).sqrt_()",
             (OPTIM,)),
    Mutation("adamw: second moment kept in the parameter's dtype", "lmfast/train/optim.py",
             "state[\"exp_avg_sq\"] = torch.zeros_like(p, dtype=torch.float32",
             "state[\"exp_avg_sq\"] = torch.zeros_like(p, dtype=p.dtype", (OPTIM,)),
    Mutation("clipping: small gradients are scaled up to max_norm", "lmfast/train/optim.py",
             "scale = torch.clamp(max_norm / (total + eps), max=1.0)", "scale = max_norm / (total + eps)",
             (OPTIM,)),
    # ---- data sampler (lmfast/data/sampling.py)
    Mutation("sampler: the last window is never drawn", "lmfast/data/sampling.py",
             "high = n - context_length\n", "high = n - context_length - 1\n", ("tests/data/test_data.py",)),
    Mutation("sampler: token ids pass through int16", "lmfast/data/sampling.py",
             "np.asarray(windows, dtype=np.int64)", "np.asarray(windows, dtype=np.int16).astype(np.int64)",
             ("tests/data/test_data.py",)),
    Mutation("sampler: a restored sampler starts a fresh random stream", "lmfast/data/sampling.py",
             "self.rng = np.random.Generator(bit_generator)", "self.rng = np.random.default_rng()",
             ("tests/data/test_data.py",)),
    # ---- checkpoint / resume (lmfast/train/checkpoint.py, lmfast/train/run_state.py)
    Mutation("checkpoint: the optimizer state is not saved", "lmfast/train/checkpoint.py",
             "\"optimizer\": optimizer.state_dict() if optimizer is not None else None,", "\"optimizer\": None,",
             ("tests/train/test_checkpoint.py", *RESUME)),
    Mutation("checkpoint: a compiled model is saved with _orig_mod. keys", "lmfast/model/weights.py",
             "inner = getattr(model, \"_orig_mod\", None) or getattr(model, \"module\", None)",
             "inner = getattr(model, \"module\", None)", ("tests/train/test_checkpoint.py",)),
    Mutation("resume: the data-sampler state is looked up under another key", "lmfast/train/run_state.py",
             "if \"data\" in state:", "if \"sampler\" in state:", RESUME),
    Mutation("resume: progress (tokens seen, best val loss, epoch sums) not restored", "lmfast/train/run_state.py",
             "if \"progress\" in state:", "if \"progress_state\" in state:", RESUME),
    Mutation("resume: --resume auto takes the oldest checkpoint", "lmfast/train/run_state.py",
             "return max(candidates, key=_resume_order)", "return min(candidates, key=_resume_order)", RESUME),
    # ---- run lifecycle and checkpoint integrity (lmfast/train/lifecycle.py, lmfast/train/checkpoint.py)
    Mutation("lifecycle: a second run on a directory in use is let in", "lmfast/train/lifecycle.py",
             "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", "pass", (RELIABILITY,)),
    Mutation("lifecycle: the run lock follows a symlink planted at its name", "lmfast/train/lifecycle.py",
             'os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)', "os.O_RDWR | os.O_CREAT", (RELIABILITY,)),
    Mutation("lifecycle: keep_last keeps one step checkpoint too few", "lmfast/train/lifecycle.py",
             "older = [p for s, p in steps if s <= upto_step][:-keep_last]",
             "older = [p for s, p in steps if s <= upto_step][:1 - keep_last]", (RELIABILITY,)),
    Mutation("checkpoint: a tensor that differs from its checksum is loaded", "lmfast/train/checkpoint.py",
             "bad = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))",
             "bad = sorted(k for k in then.keys() - now.keys())", ("tests/train/test_checkpoint.py",)),
    Mutation("sharded checkpoint: .metadata unpickled with plain pickle (runs code)", "lmfast/train/dcp_files.py",
             "metadata = _MetadataUnpickler(f).load()", "metadata = pickle.load(f)", (SHARDED,)),
    Mutation("sharded checkpoint: a shard that differs from its CRC is loaded", "lmfast/train/dcp_files.py",
             "if file_crc32(path / name) != sums[name][1]:", "if False:", (SHARDED,)),
    Mutation("sharded checkpoint: small values loaded with weights_only=False", "lmfast/train/dcp_files.py",
             "loaded = torch.load(value, weights_only=True)", "loaded = torch.load(value, weights_only=False)",
             (SHARDED,)),
    # ---- what a run reuses is checked by content (lmfast/data/, lmfast/train/run_setup.py, run_state.py)
    Mutation("token cache: a cached .npy is reused without checking its CRC", "lmfast/data/text_tokens.py",
             "if out.exists() and _sum_matches(out):", "if out.exists():", (REUSED,)),
    Mutation("token cache: an edited id-range memo is trusted", "lmfast/data/cache.py",
             'and saved["digest"] == _memo_digest(stamp, saved["value"])', "", (REUSED,)),
    Mutation("tokenizer reuse: a file that changed since it was saved is used", "lmfast/train/run_setup.py",
             "if _file_sha256(path) != digest:", "if False:", (REUSED,)),
    Mutation("resume: the checkpoint's tokenizer fingerprint is not compared", "lmfast/train/run_state.py",
             "if saved is not None and saved != now:", "if False:", (REUSED,)),
    # ---- fused linear cross-entropy (lmfast/model/functional.py)
    Mutation("linear cross-entropy: d weight is the summed, not the mean, loss's gradient",
             "lmfast/model/functional.py",
             "beta=0.0 if start == 0 else 1.0, alpha=scale, out=dw)", "beta=0.0 if start == 0 else 1.0, out=dw)",
             (LCE,)),
    Mutation("linear cross-entropy: the target's gradient misses its -1", "lmfast/model/functional.py",
             "(target_lp.exp() - 1.0).to(dtype)", "target_lp.exp().to(dtype)", (LCE,)),
    # ---- tokenizer (lmfast/tokenizer/streaming.py, lmfast/tokenizer/reference.py, csrc/)
    Mutation("tokenizer: streaming cuts before a word, splitting ' word' pre-tokens", "lmfast/tokenizer/patterns.py",
             "\"gpt2\": r\"(?r)\\S\\s|", "\"gpt2\": r\"(?r)\\s\\S|", ("tests/tokenizer/test_tokenizer.py",)),
    Mutation("tokenizer: streaming may cut inside a special token", "lmfast/tokenizer/streaming.py",
             "for s in specials if len(s) > 1)", "for s in specials if len(s) > 64)",
             ("tests/tokenizer/test_tokenizer.py",)),
    # (Picking the rightmost of equal-rank pairs would be an equivalent mutant: ranks are unique per pair, and every
    # occurrence of the chosen pair is merged left to right either way.)
    Mutation("tokenizer: the Python pre-tokenizer pattern lost the 'll contraction", "lmfast/tokenizer/patterns.py",
             "'s|'t|'re|'ve|'m|'ll|'d| ?", "'s|'t|'re|'ve|'m|'d| ?", ("tests/tokenizer/test_tokenizer.py",)),
    Mutation("tokenizer: special tokens matched shortest first", "lmfast/tokenizer/reference.py",
             "tokens = sorted(special_tokens, key=lambda s: (-len(s), s))",
             "tokens = sorted(special_tokens, key=lambda s: (len(s), s))", ("tests/tokenizer/test_tokenizer.py",)),
    Mutation("tokenizer (C++): the piece cache serves another engine's results", "csrc/bpe.cpp",
             "if (slots[0].first == engine_id && slots[0].second)", "if (slots[0].second)",
             ("tests/tokenizer/test_bpe_native.py::test_engines_with_other_vocabs_on_one_thread_never_share_cached_pieces",)),
    Mutation("tokenizer (C++): cl100k's contractions match lowercase only", "csrc/pretokenize.h",
             "if (size_t c = contraction_len<true>(p, i, n)) return i + c;",
             "if (size_t c = contraction_len<false>(p, i, n)) return i + c;",
             ("tests/tokenizer/test_pretokenizers.py",)),
    Mutation("tokenizer (C++): a file's cut may fall inside an allowed special token", "csrc/bpe.cpp",
             "while (c && straddles(c)) c = find_cut(text, pos, c - 1);", "(void)straddles;",
             ("tests/tokenizer/test_pretokenizers.py",)),
    # ---- model (lmfast/model/functional.py, lmfast/model/transformer.py)
    Mutation("model: RMSNorm adds eps outside the square root (the branch torch.compile takes)",
             "lmfast/model/functional.py",
             "rstd = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)",
             "rstd = 1.0 / (x32.pow(2).mean(dim=-1, keepdim=True).sqrt() + eps)",
             ("tests/model/test_functional.py",)),
    Mutation("model: RMSNorm adds eps outside the square root (the eager autograd Function)",
             "lmfast/model/functional.py", ".square_().div_(x.shape[-1]).add_(eps).rsqrt_()",
             ".square_().div_(x.shape[-1]).sqrt_().add_(eps).reciprocal_()", ("tests/model/test_functional.py",)),
    Mutation("model: RoPE's compile-time pair formula rotates the odd element the wrong way",
             "lmfast/model/functional.py", "x0 * sin + x1 * cos), dim=-1)", "x0 * sin - x1 * cos), dim=-1)",
             ("tests/model/test_functional.py",)),
    Mutation("model: RMSNorm defaults to eps 1e-6", "lmfast/model/transformer.py",
             "def __init__(self, d_model: int, eps: float = 1e-5,",
             "def __init__(self, d_model: int, eps: float = 1e-6,",
             ("tests/model/test_model.py",)),
    Mutation("model: SwiGLU gates the w3 branch instead of w1", "lmfast/model/transformer.py",
             "F.silu(self.w1(x)) * self.w3(x)", "self.w1(x) * F.silu(self.w3(x))", ("tests/model/test_model.py",)),
    Mutation("model: attention scores divided by d_k, not sqrt(d_k)", "lmfast/model/functional.py",
             "Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])", "Q @ K.transpose(-2, -1) / Q.shape[-1]",
             ("tests/model/test_functional.py", "tests/model/test_model.py")),
    Mutation("model: with a KV cache a chunk's queries cannot see their own keys", "lmfast/model/transformer.py",
             ".tril(diagonal=past)", ".tril(diagonal=past - 1)", MODEL),
    Mutation("model: single-token decode is causal-masked, so it sees only the first cached key",
             "lmfast/model/transformer.py",
             "return F.scaled_dot_product_attention(q, k, v, **gqa)\n",
             "return F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)\n", MODEL),
    Mutation("model: Linear init variance 1 / (d_in + d_out)", "lmfast/model/transformer.py",
             "std = math.sqrt(2.0 / (in_features + out_features))",
             "std = math.sqrt(1.0 / (in_features + out_features))",
             ("tests/model/test_model.py",)),
    Mutation("model: cross-entropy gradient not divided by the token count", "lmfast/model/functional.py",
             "grad.mul_(grad_loss / rows)", "grad.mul_(grad_loss)", ("tests/model/test_functional.py",)),
    # ---- config (lmfast/train/config.py)
    Mutation("config: a 'gt' bound accepts its edge (num_epochs: 0, rope_theta: 0)", "lmfast/train/config.py",
             "if \"gt\" in rules and value <= rules[\"gt\"]:", "if \"gt\" in rules and value < rules[\"gt\"]:",
             ("tests/train/test_config.py", "tests/train/test_config_rules.py")),
    Mutation("config: a 'max' bound rejects its edge (sample_top_p: 1)", "lmfast/train/config.py",
             "if \"max\" in rules and value > rules[\"max\"]:", "if \"max\" in rules and value >= rules[\"max\"]:",
             ("tests/train/test_config.py", "tests/train/test_config_rules.py")),
    Mutation("config: beta = 1 accepted", "lmfast/train/config.py",
             "all(0.0 <= b < 1.0 for b in value)", "all(0.0 <= b <= 1.0 for b in value)",
             ("tests/train/test_config.py", "tests/train/test_config_rules.py")),
    Mutation("config: --set values kept as strings", "lmfast/train/config.py",
             "out[key.strip()] = yaml.safe_load(text) if text.strip() else None",
             "out[key.strip()] = text if text.strip() else None", ("tests/train/test_config.py",)),
    Mutation("config: no closest-key suggestion for a typo", "lmfast/train/config.py",
             "spelled = difflib.get_close_matches(key, names, n=n, cutoff=0.5)",
             "spelled = difflib.get_close_matches(key, names, n=n, cutoff=0.99)", ("tests/train/test_config.py",)),
    Mutation("config: an abbreviation (lr) suggests nothing", "lmfast/train/config.py",
             "by_initials = [k for k in names if initials[k] == key]", "by_initials = [k for k in names if False]",
             ("tests/train/test_run_outputs.py",)),
    Mutation("run outputs: a relative log_file stays in the working directory", "lmfast/train/run_setup.py",
             "else Path(cfg.checkpoint_dir) / cfg.log_file", "else Path(cfg.log_file)",
             ("tests/train/test_run_outputs.py",)),
]


# ------------------------------------------------------------------------------------------------------------
# Running


def _copy_tree(dest: Path) -> None:
    """The tracked and untracked-but-not-ignored files and the built extension (lmfast.kernels finds kernels/ itself,
    as in any source tree)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for built in ROOT.glob("lmfast/tokenizer/_bpe*.so"):
        shutil.copy2(built, dest / "lmfast" / "tokenizer" / built.name)


def _env(tree: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTEST_ADDOPTS", None)
    return env


def _check_imports_from(tree: Path) -> None:
    code = "import lmfast, lmfast.kernels; print(lmfast.__file__); print(lmfast.kernels.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=_env(tree), capture_output=True, text=True)
    paths = out.stdout.split()
    if out.returncode or len(paths) != 2 or not all(Path(p).resolve().is_relative_to(tree.resolve()) for p in paths):
        sys.exit(f"mutate.py: the copy in {tree} does not import as lmfast ({out.stdout.strip()} "
                 f"{out.stderr.strip()[-300:]}); nothing was run")


def _pytest(tree: Path, tests: tuple[str, ...], first_failure: bool = True) -> tuple[str, str, float]:
    """Run tests in the copy; (outcome, detail, seconds): passed, failed (detail: the first failing test), error."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    if first_failure:
        cmd.insert(3, "-x")
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=tree, env=_env(tree), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return "timeout", f"still running after {TIMEOUT_S} s", time.perf_counter() - start
    seconds = time.perf_counter() - start
    text = out.stdout + out.stderr
    if out.returncode == 0:
        return "passed", "", seconds
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)
    if out.returncode == 1 and failed:
        return "failed", failed[0], seconds
    return "error", f"pytest exit {out.returncode}: " + " | ".join(text.strip().splitlines()[-3:]), seconds


def _rebuild(tree: Path) -> str:
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, env=_env(tree),
                         capture_output=True, text=True)
    return "" if out.returncode == 0 else "the extension did not build: " + out.stderr.strip()[-300:]


def run_mutation(tree: Path, m: Mutation) -> tuple[str, str, float]:
    """Apply ``m`` in the copy, run its tests, restore; (result, detail, seconds)."""
    path = tree / m.file
    original = path.read_text(encoding="utf-8")
    count = original.count(m.old)
    if count != 1:
        return "stale", f"old text found {count} times in {m.file}", 0.0
    native = m.file.startswith("csrc/")
    built = {p: p.read_bytes() for p in (tree / "lmfast" / "tokenizer").glob("_bpe*.so")} if native else {}
    path.write_text(original.replace(m.old, m.new), encoding="utf-8")
    try:
        if native and (why := _rebuild(tree)):
            return "error", why, 0.0
        outcome, detail, seconds = _pytest(tree, m.tests)
    finally:
        path.write_text(original, encoding="utf-8")
        for p, data in built.items():
            p.write_bytes(data)
    result = {"failed": "caught", "passed": "MISSED", "timeout": "caught (timeout)", "error": "error"}[outcome]
    return result, detail, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", action="append", default=[], help="run the mutations whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the chosen tests")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.k or any(k.lower() in m.name.lower() for k in args.k)]
    if not chosen:
        print(f"no mutation name contains any of {args.k}", file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.name}\n    {m.file}: {m.old!r} -> {m.new!r}\n    tests: {' '.join(m.tests)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="lmfast-mutate-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        _check_imports_from(tree)
        baseline = BASELINE_SKIPPED
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            outcome, detail, seconds = _pytest(tree, tests, first_failure=False)
            if outcome != "passed":
                print(f"The unmutated tree does not pass the chosen tests ({outcome}: {detail}); no mutation was run, "
                      "since a test that fails anyway would count its mutation as caught. Fix that first.",
                      file=sys.stderr)
                return 2
            baseline = (f"Baseline: all {len(tests)} test files/ids these mutations name passed on the unmutated copy "
                        f"({seconds:.0f} s) before any mutation ran, so each 'caught' is the mutation's doing.")
            print(baseline, flush=True)
        rows = []
        for m in chosen:
            result, detail, seconds = run_mutation(tree, m)
            rows.append((m.name, result, detail, seconds))
            print(f"{result:<16} {seconds:5.0f} s  {m.name}  {detail}", flush=True)
    print(_table(rows, baseline))
    return 0 if all(r[1].startswith("caught") for r in rows) else 1


BASELINE_SKIPPED = ("Baseline: not run (--no-baseline), so a test that fails without any mutation would count its "
                    "mutations as caught; rerun without --no-baseline before trusting this table.")


def _table(rows: list[tuple[str, str, str, float]], baseline: str = BASELINE_SKIPPED) -> str:
    lines = ["", baseline, "", "| mutation | result | caught by / why | s |", "|---|---|---|---:|"]
    lines += [f"| {name} | {result} | {detail} | {seconds:.0f} |" for name, result, detail, seconds in rows]
    caught = sum(r[1].startswith("caught") for r in rows)
    lines.append(f"\n{caught} of {len(rows)} caught")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
