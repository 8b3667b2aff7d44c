"""One training step on a GPU, lmfast against Hugging Face's Llama of the same shape: tokens/s, MFU, peak memory.

    python benchmarks/bench_train_step_gpu.py --out DIR [--deadline-s 150] [--steps 15]

Shapes: configs/tinystories_17m.yaml (batch 32 x 256) and configs/gpt2_124m.yaml (batch 16 x 1024, one
micro-batch a step). A step is what the trainer does per optimizer step: bf16-autocast forward, cross-entropy,
backward, clipping at 1.0, AdamW step, ``zero_grad(set_to_none=True)``. Providers run most valuable first, so a
cut-short run still has the headline numbers: gpt2_124m fused+compiled (with ``fused_loss`` on, the default), then
reference+compiled and HF SDPA, then the rest (``_plan``):

* ``lmfast fused+compiled``, ``lmfast reference+compiled``: the real trainer (``lmfast.train.Trainer`` built from
  the config with ``backend`` fused / reference and ``compile: true``), timing ``Trainer.train_step``; with a
  ``fused_loss`` config key, gpt2_124m also runs with it off and on;
* ``hf sdpa``, ``hf compiled``: ``transformers.LlamaForCausalLM`` (SDPA attention) of the same shape, with its best
  settings: ``torch.optim.AdamW(fused=True)``, foreach clipping, ``F.cross_entropy`` on fp32 logits.

tokens/s from the median of ``--steps`` timed steps (after warm-up steps that include compiling), MFU from
``lmfast.train.mfu`` (model FLOPs per token x tokens/s over the device's dense bf16 peak), peak memory as
``torch.cuda.max_memory_allocated`` over the timed steps. Each result is appended to ``DIR/train_step_gpu.jsonl``
as soon as it is measured. Target: gpt2_124m fused+compiled >= 45% MFU on an H100/H200.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from _gpu_runs import ROOT, build_trainer, config_keys, dry_run, markov_tokens

SHAPE_KEYS = ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff", "rope_theta")
BATCH = {"tinystories_17m": 32, "gpt2_124m": 16}
WARMUP = 3


def _plan(keys: set[str]) -> list[tuple[str, str, dict]]:
    """(config, provider, settings) in the order they run: gpt2_124m's lmfast rows first (the MFU target), each a
    cold inductor compile of 30-60 s, so a stage cut at its cap drops the least valuable rows, not the headline."""
    fused = [("gpt2_124m", "lmfast fused+compiled", {"backend": "fused"})]
    if "fused_loss" in keys:  # linear cross-entropy without the full logits (the default), and with the full logits
        fused = [("gpt2_124m", f"lmfast fused+compiled fused_loss={flag}", {"backend": "fused", "fused_loss": flag})
                 for flag in ("true", "false")]
    return [
        ("gpt2_124m", "lmfast auto+compiled", {"backend": "auto"}),  # the default: the fused table's choice per op
        ("gpt2_124m", "lmfast reference+compiled", {"backend": "reference"}),
        fused[0],
        ("gpt2_124m", "hf sdpa", {}),
        *fused[1:],
        ("tinystories_17m", "lmfast fused+compiled", {"backend": "fused"}),
        ("tinystories_17m", "hf sdpa", {}),
        ("tinystories_17m", "lmfast reference+compiled", {"backend": "reference"}),
        ("gpt2_124m", "hf compiled", {}),
        ("tinystories_17m", "hf compiled", {}),
    ]


def _shape(config: str) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / f"{config}.yaml").read_text())
    return {k: cfg[k] for k in SHAPE_KEYS}


def _lmfast_step(config: str, settings: dict, tokens: Path, work: Path):
    trainer = build_trainer(config, tokens, work / f"{config}-{len(list(work.iterdir()))}", batch_size=BATCH[config],
                            dtype="bfloat16", compile="true", max_steps=10_000, warmup_iters=10,
                            cosine_cycle_iters=10_000, **settings)
    counter = iter(range(10**9))
    return (lambda: trainer.train_step(next(counter))), trainer.tokens_per_step, trainer.model.flops_per_token()


def _hf_step(config: str, compiled: bool):
    import transformers

    from lmfast.model import TransformerLM

    shape = _shape(config)
    llama = transformers.LlamaConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["d_model"], intermediate_size=shape["d_ff"],
        num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_heads"], max_position_embeddings=shape["context_length"], rms_norm_eps=1e-5,
        rope_theta=shape["rope_theta"], tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        use_cache=False, attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(llama).cuda().train()
    run = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    batch, ctx = BATCH[config], shape["context_length"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    x, y = (torch.randint(0, shape["vocab_size"], (batch, ctx), device="cuda", generator=gen) for _ in range(2))

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = run(input_ids=x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    flops = TransformerLM(**shape, backend="reference", device="meta").flops_per_token()
    return step, batch * ctx, flops


def measure(step, tokens_per_step: int, flops_per_token: float, steps: int) -> dict:
    """Warm up (compiles), then time ``steps`` steps one by one; tokens/s of the median step, MFU, peak memory."""
    from lmfast.train.mfu import device_peak_flops, mfu

    started = time.perf_counter()
    for _ in range(WARMUP):
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    tokens_per_s = tokens_per_step / statistics.median(times)
    peak = device_peak_flops("cuda", torch.bfloat16)
    util = mfu(tokens_per_s, flops_per_token, peak)
    return {"tokens_per_s": round(tokens_per_s), "mfu": None if util is None else round(util, 4),
            "step_ms_median": round(1e3 * statistics.median(times), 2), "step_ms_min": round(1e3 * min(times), 2),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "warmup_s": round(warmup_s, 1),
            "tokens_per_step": tokens_per_step, "flops_per_token": flops_per_token, "peak_flops": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--deadline-s", type=float, default=150.0, help="start no provider after this many seconds")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--dry-run", action="store_true", help="import what the run uses, run nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        return dry_run("bench_train_step_gpu", "transformers")
    if not torch.cuda.is_available():
        print("bench_train_step_gpu: no CUDA device; nothing run", file=sys.stderr)
        return 3
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "train_step_gpu.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        token_files = {}
        for config, provider, settings in _plan(config_keys()):
            row = {"config": config, "provider": provider, "batch": BATCH[config], "gpu": torch.cuda.get_device_name()}
            if time.perf_counter() - started > args.deadline_s:
                row["skipped"] = f"past the {args.deadline_s:.0f} s deadline"
            else:
                step = None
                try:
                    if provider.startswith("lmfast"):
                        if config not in token_files:
                            vocab = _shape(config)["vocab_size"]
                            token_files[config] = markov_tokens(work / f"{config}.npy", vocab, 400_000)
                        step, tokens, flops = _lmfast_step(config, settings, token_files[config], work)
                    else:
                        step, tokens, flops = _hf_step(config, compiled=provider == "hf compiled")
                    row.update(measure(step, tokens, flops, args.steps))
                except Exception as e:  # one provider failing must not hide the others
                    row["error"] = f"{type(e).__name__}: {e}"[:500]
                del step  # the model, its optimizer and their memory go before the next provider
                gc.collect()
                torch.cuda.empty_cache()
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
