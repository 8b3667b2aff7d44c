import json

import pytest

from lmfast.plot import draw_runs, main, read_metrics


def _write_run(path, steps=5, mfu=False):
    path.mkdir()
    with open(path / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            extra = {"mfu": 0.01 * s} if mfu else {}
            f.write(json.dumps(dict(step=s, epoch=1, loss=5.0 / s, lr=1e-3, tokens_per_s=1000.0 + s, **extra)) + "\n")
        f.write(json.dumps(dict(step=steps, epoch=1, val_loss=2.0, val_ppl=7.39)) + "\n")


def test_read_metrics_separates_train_and_validation_records(tmp_path):
    _write_run(tmp_path / "run")
    train, val = read_metrics(tmp_path / "run")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5] and val[0]["val_loss"] == 2.0


def test_plot_cli_writes_a_png_of_several_runs(tmp_path):
    pytest.importorskip("matplotlib")
    _write_run(tmp_path / "a")
    _write_run(tmp_path / "b")
    out = tmp_path / "runs.png"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_a_missing_or_corrupt_run_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:1 is not a JSON object"):
        read_metrics(tmp_path / "bad")


def test_plot_draws_mfu_in_percent_when_a_run_logged_it(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    _write_run(tmp_path / "cpu")
    fig = draw_runs([tmp_path / "cpu"])
    assert [ax.get_title() for ax in fig.axes] == ["loss (nats/token)", "learning rate", "tokens / s"]
    plt.close(fig)
    _write_run(tmp_path / "gpu", mfu=True)
    fig = draw_runs([tmp_path / "cpu", tmp_path / "gpu"])
    assert fig.axes[3].get_title() == "MFU (%)"
    (line,) = fig.axes[3].get_lines()  # only the run that logged MFU
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5]
    assert list(line.get_ydata()) == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])
    plt.close(fig)
