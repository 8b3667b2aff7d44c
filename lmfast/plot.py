"""Plot training runs from their ``metrics.jsonl``: loss (train and validation), learning rate, tokens/s.

    python -m lmfast.plot checkpoints/quickstart [checkpoints/other_run ...] --out runs.png

Each argument is a run directory (or its metrics.jsonl); several runs share the axes, labelled by directory.
Needs matplotlib (``pip install lmfast[plot]``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["read_metrics", "plot_runs", "main"]


def read_metrics(run: str | Path) -> tuple[list[dict], list[dict]]:
    """(train records, validation records) of a run directory or metrics.jsonl; bad lines name the line."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a run's checkpoint_dir or its metrics.jsonl")
    train, val = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{n} is not a JSON object; was the file written by lmfast.train?") from None
        (val if "val_loss" in record else train).append(record)
    return train, val


def plot_runs(runs: list[str | Path], out: str | Path) -> Path:
    """Draw loss / lr / tokens-per-second against step for each run into one PNG at ``out``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install 'lmfast[plot]' (or matplotlib)") from None
    if not runs:
        raise ValueError("give at least one run directory or metrics.jsonl to plot")
    fig, (ax_loss, ax_lr, ax_tps) = plt.subplots(1, 3, figsize=(15, 4))
    for run in runs:
        train, val = read_metrics(run)
        label = Path(run).name if Path(run).is_dir() else Path(run).parent.name
        steps = [r["step"] for r in train]
        (line,) = ax_loss.plot(steps, [r["loss"] for r in train], label=f"{label} train")
        if val:
            ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o--", color=line.get_color(),
                         label=f"{label} val")
        ax_lr.plot(steps, [r["lr"] for r in train], color=line.get_color(), label=label)
        ax_tps.plot(steps, [r["tokens_per_s"] for r in train], color=line.get_color(), label=label)
    for ax, title in ((ax_loss, "loss (nats/token)"), (ax_lr, "learning rate"), (ax_tps, "tokens / s")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmfast.plot", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (checkpoint_dir) or metrics.jsonl files")
    parser.add_argument("--out", default="runs.png", help="PNG to write (default runs.png)")
    args = parser.parse_args(argv)
    try:
        print(plot_runs(args.runs, args.out))
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
