"""Sample text from a trained model: temperature + nucleus (top-p) sampling with a KV cache.

    python -m lmfast.generate --checkpoint checkpoints/quickstart/final_model.pt --prompt "ROMEO:" \\
        --max-new-tokens 200 --temperature 0.8 --top-p 0.95
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lmfast.checkpoint import load_model_state, read_checkpoint
from lmfast.config import ConfigError, TrainConfig
from lmfast.model import TransformerLM

__all__ = ["sample_next", "generate_ids", "generate_text", "load_model", "main"]


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """One token id per row of ``logits`` (batch, vocab). ``temperature`` 0 is greedy; ``top_p`` keeps the
    smallest set of tokens whose probability mass reaches ``top_p``."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_ids(model: TransformerLM, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.8,
                 top_p: float = 0.95, eos_id: int | None = None, generator: torch.Generator | None = None
                 ) -> list[int]:
    """Continue ``prompt_ids`` by up to ``max_new_tokens`` tokens (stopping after ``eos_id``); returns new ids.

    The prompt is kept to the last ``context_length - 1`` tokens, and decoding stops at the context limit.
    """
    if not prompt_ids:
        raise ValueError("the prompt is empty; give at least one token (e.g. a word, or the <|endoftext|> token)")
    device = model.lm_head.weight.device
    ids = prompt_ids[-(model.context_length - 1):]
    budget = min(max_new_tokens, model.context_length - len(ids))
    caches = model.new_kv_caches(1, len(ids) + budget)
    logits = model(torch.tensor([ids], device=device), caches=caches)[:, -1]
    out: list[int] = []
    for i in range(budget):
        nxt = sample_next(logits, temperature, top_p, generator)
        out.append(int(nxt))
        if (eos_id is not None and out[-1] == eos_id) or i == budget - 1:
            break
        logits = model(nxt.view(1, 1), caches=caches)[:, -1]
    return out


def generate_text(model: TransformerLM, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.8,
                  top_p: float = 0.95, seed: int | None = None) -> str:
    """Prompt text in, the generated continuation out (decoded with ``tokenizer``)."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.lm_head.weight.device).manual_seed(seed)
    eos = getattr(tokenizer, "eot_id", None)
    new = generate_ids(model, tokenizer.encode(prompt), max_new_tokens, temperature, top_p, eos, generator)
    if eos is not None and new and new[-1] == eos:
        new = new[:-1]
    return tokenizer.decode(new)


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[TransformerLM, object, dict]:
    """Rebuild the model of a training checkpoint (its saved config) with its tokenizer; returns (model, tok, state)."""
    from lmfast._run_setup import load_run_tokenizer  # the trainer owns where a run keeps its tokenizer

    state = read_checkpoint(checkpoint, map_location=device)
    if not isinstance(state.get("config"), dict):
        raise ValueError(f"{checkpoint} holds no training config; it was not written by lmfast.train")
    try:
        cfg = TrainConfig(**state["config"])
    except (ConfigError, TypeError) as e:
        raise ValueError(f"{checkpoint} holds a config this lmfast cannot read: {e}") from None
    model = TransformerLM(cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff,
                          cfg.rope_theta, backend="reference", device=device)
    load_model_state(model, state["model"], checkpoint)
    model.eval()
    tokenizer = load_run_tokenizer(state.get("meta", {}).get("tokenizer"), Path(checkpoint).parent)
    return model, tokenizer, state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmfast.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by python -m lmfast.train")
    parser.add_argument("--prompt", default="\n", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus mass in (0, 1]")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    args = parser.parse_args(argv)
    if not 0 < args.top_p <= 1 or args.temperature < 0 or args.max_new_tokens < 1:
        parser.error("need 0 < --top-p <= 1, --temperature >= 0 and --max-new-tokens >= 1")
    try:
        model, tokenizer, _ = load_model(args.checkpoint, args.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = generate_text(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_p, args.seed)
    print(args.prompt + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
