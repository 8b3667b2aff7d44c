"""benchmarks/fused_table_update.py turns a GPU check's kernel rows into the backend table's rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import fused_table_update as update  # noqa: E402

sys.path.remove(str(BENCHMARKS))


def _row(group, provider, value):
    return {"file": "x", "group": group, "provider": provider, "unit": "tflops", "value": value}


def test_a_row_takes_its_kernel_only_where_every_measured_size_beats_the_peer(tmp_path):
    rows = [_row("add_rmsnorm fwd+bwd hidden=768", "fused", 900),
            _row("add_rmsnorm fwd+bwd hidden=768", "compiled", 800),
            _row("add_rmsnorm fwd+bwd hidden=4096", "fused", 1000),
            _row("add_rmsnorm fwd+bwd hidden=4096", "compiled", 1100),
            _row("rope attention fwd+bwd head_dim=64 seq=1024", "fused", 300),
            _row("rope attention fwd+bwd head_dim=64 seq=1024", "rope-flash", 250),
            _row("document attention fwd+bwd head_dim=64 seq=2048 docs=8", "fused", 200),
            _row("document attention fwd+bwd head_dim=64 seq=2048 docs=8", "flex", 180),
            _row("document attention fwd+bwd head_dim=64 seq=2048 docs=8", "sdpa-dense", 40)]
    summary = {"machine": {"gpu": "NVIDIA H100", "commit": "abc1234"}, "stages": [{"name": "kernels", "rows": rows}]}
    out = update.write_proposal(summary, "sm90", tmp_path / "fused_table.json")
    table = json.loads(out.read_text())["generations"]
    sm90 = table["sm90"]
    assert sm90["add_rmsnorm"]["use_fused"] is False  # 1.125x at 768 but 0.909x at 4096
    assert sm90["add_rmsnorm"]["measured"]["ratios"]["add_rmsnorm fwd+bwd hidden=4096: fused / compiled"] == 0.909
    assert sm90["rope_attention"]["use_fused"] is True and "H100" in sm90["rope_attention"]["why"]
    assert sm90["document_attention"]["use_fused"] is True and sm90["document_attention"]["why"].startswith("feature")
    assert sm90["rmsnorm"] == json.loads(update.TABLE.read_text())["generations"]["sm90"]["rmsnorm"]  # unmeasured
    assert table["sm80"] == json.loads(update.TABLE.read_text())["generations"]["sm80"]
