"""Plot training runs from their ``metrics.jsonl``: loss (train and validation), learning rate, tokens/s, MFU.

    python -m lmfast.plot checkpoints/quickstart [checkpoints/other_run ...] --out runs.png

Each argument is a run directory (or its metrics.jsonl); several runs share the axes, labelled by directory.
The MFU panel appears when a run logged MFU (training on a GPU of :mod:`lmfast.train.mfu`'s table).
Needs matplotlib (``pip install lmfast[plot]``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmfast import command_name

__all__ = ["read_metrics", "draw_runs", "plot_runs", "main"]


def read_metrics(run: str | Path) -> tuple[list[dict], list[dict]]:
    """(train records, validation records) of a run directory or metrics.jsonl, each step once, in step order.

    Where a step appears twice (a resume by an lmfast that did not drop the repeated steps) the later record wins:
    it is the one the resumed run continued from. A last line without its newline (a run killed mid-write) is
    skipped; any other bad line is an error naming the line.
    """
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a run's checkpoint_dir or its metrics.jsonl")
    data = path.read_bytes()
    lines = data.splitlines()
    if lines and not data.endswith(b"\n"):
        lines.pop()  # cut short by a kill
    train: dict[int, dict] = {}
    val: dict[int, dict] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            step = record["step"]
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{n} is not UTF-8 text (byte {line[e.start]:#04x}); the file is damaged: restore "
                             "it from a copy, or delete that line") from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}:{n} is not a JSON object with a step; was it written by lmfast.train?") from None
        (val if "val_loss" in record else train)[step] = record
    return [train[s] for s in sorted(train)], [val[s] for s in sorted(val)]


def draw_runs(runs: list[str | Path]):
    """A matplotlib figure of loss / lr / tokens per second (and MFU in %, when logged) against step per run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install 'lmfast[plot]' (or matplotlib)") from None
    if not runs:
        raise ValueError("give at least one run directory or metrics.jsonl to plot")
    records = [(run, *read_metrics(run)) for run in runs]
    with_mfu = any("mfu" in r for _, train, _ in records for r in train)
    fig, axes = plt.subplots(1, 4 if with_mfu else 3, figsize=(20 if with_mfu else 15, 4))
    for run, train, val in records:
        label = Path(run).name if Path(run).is_dir() else Path(run).parent.name
        steps = [r["step"] for r in train]
        (line,) = axes[0].plot(steps, [r["loss"] for r in train], label=f"{label} train")
        if val:
            axes[0].plot([r["step"] for r in val], [r["val_loss"] for r in val], "o--", color=line.get_color(),
                         label=f"{label} val")
        axes[1].plot(steps, [r["lr"] for r in train], color=line.get_color(), label=label)
        axes[2].plot(steps, [r["tokens_per_s"] for r in train], color=line.get_color(), label=label)
        logged = [r for r in train if "mfu" in r]
        if logged:
            axes[3].plot([r["step"] for r in logged], [100 * r["mfu"] for r in logged], color=line.get_color(),
                         label=label)
    titles = ("loss (nats/token)", "learning rate", "tokens / s", "MFU (%)")
    for ax, title in zip(axes, titles, strict=False):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_runs(runs: list[str | Path], out: str | Path) -> Path:
    """Draw :func:`draw_runs` into one PNG at ``out``."""
    fig = draw_runs(runs)
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("plot"), description=__doc__.splitlines()[0])
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
