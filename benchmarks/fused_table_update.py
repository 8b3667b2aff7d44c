"""Turn a GPU check's kernel benchmarks into rows of ``lmfast/model/fused_table.json``, the table ``backend: auto``
follows.

A row's kernel is used where it was measured at least as fast as its peer at every size the benchmark ran (the
smallest ratio fused / peer >= 1.0): the compiled reference for RMSNorm, add + RMSNorm and RoPE, SDPA flash for
attention, RoPE then SDPA flash for RoPE inside attention, ``torch.optim.AdamW(fused=True)`` (with
``clip_grad_norm_``) for the optimizer rows. A feature row (document-masked attention: the reference has no tile
skipping) stays on and records its ratios. A row no benchmark measured is left as it was.

    python benchmarks/fused_table_update.py --check $OUT/gpu_check.json --generation sm90 [--out fused_table.json]

``benchmarks/gpu_check.py`` calls :func:`write_proposal` after its kernel stage, so a lease brings back
``fused_table.json`` beside ``gpu_check.md``; committing it as ``lmfast/model/fused_table.json`` is the human step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "lmfast" / "model" / "fused_table.json"
# table row -> the gpu_check.TARGETS entries (group prefix, ours, peer) that measure it
MEASURED_BY = {
    "rmsnorm": (("rmsnorm fwd+bwd", "fused", "compiled"),),
    "add_rmsnorm": (("add_rmsnorm fwd+bwd", "fused", "compiled"),),
    "rope": (("rope fwd+bwd", "fused", "compiled"),),
    "attention": (("attention fwd+bwd", "fused", "flash"),),
    "rope_attention": (("rope attention fwd+bwd", "fused", "rope-flash"),),
    "document_attention": (("document attention fwd+bwd", "fused", "flex"),
                           ("document attention fwd+bwd", "fused", "sdpa-dense")),
    "adamw": (("adamw step", "fused", "torch-fused"),),
    "clip_adamw": (("clip + adamw step", "fused-clip", "torch-fused"),),
}
FEATURES = {"document_attention"}


def ratios(rows: list[dict], prefix: str, ours: str, peer: str) -> dict[str, float]:
    """{benchmark group: ours / peer} for the groups starting with ``prefix`` that measured both (higher is better)."""
    by_group: dict[str, dict[str, float]] = {}
    for r in rows:
        if (r.get("group") or "").startswith(prefix):
            by_group.setdefault(r["group"], {})[r["provider"]] = r["value"]
    return {g: round(v[ours] / v[peer], 3) for g, v in sorted(by_group.items()) if v.get(ours) and v.get(peer)}


def updated_rows(rows: list[dict], current: dict, gpu: str, commit: str) -> dict:
    """The generation's rows, with each measured row's ratios, GPU and commit, and use_fused from the smallest ratio."""
    table = json.loads(json.dumps(current))
    for op, measures in MEASURED_BY.items():
        found = {f"{g}: {ours} / {peer}": x for prefix, ours, peer in measures
                 for g, x in ratios(rows, prefix, ours, peer).items()}
        if not found:
            continue
        worst = min(found.values())
        row = table[op]
        row["measured"] = {"gpu": gpu, "commit": commit, "ratios": found}
        if op in FEATURES:
            row["why"] = f"feature the reference lacks (tile skipping); measured smallest ratio {worst} on {gpu}"
        else:
            row["use_fused"] = worst >= 1.0
            row["why"] = f"measured on {gpu} at {commit}: smallest ratio fused / peer {worst}"
    return table


def write_proposal(summary: dict, generation: str, out: Path) -> Path:
    """Write the committed table with ``generation``'s rows updated from a gpu_check summary to ``out``."""
    full = json.loads(TABLE.read_text())
    rows = next((s.get("rows", []) for s in summary["stages"] if s["name"] == "kernels"), [])
    machine = summary.get("machine", {})
    current = full["generations"].get(generation, full["generations"]["default"])
    full["generations"][generation] = updated_rows(rows, current, machine.get("gpu", "unknown GPU"),
                                                   machine.get("commit", "unknown"))
    out.write_text(json.dumps(full, indent=1) + "\n")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", type=Path, required=True, help="a gpu_check.json")
    parser.add_argument("--generation", required=True, help="the table key: sm80, sm90, ...")
    parser.add_argument("--out", type=Path, default=TABLE)
    args = parser.parse_args()
    print(write_proposal(json.loads(args.check.read_text()), args.generation, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
