"""Plots (PNG files) and reading metrics.csv."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mesanet.eval import plot_loss_curves, plot_per_position, read_metrics
from mesanet.eval.plots import log_binned, moving_average

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = "step,lr,train_loss,grad_norm,tokens_per_s,val_loss,elapsed\n"


def write_metrics(path, steps: int, start_loss: float, val_every: int = 5) -> None:
    rows = [HEADER]
    for s in range(1, steps + 1):
        loss = start_loss * math.exp(-s / steps)
        val = f"{loss + 0.1:.4f}" if s % val_every == 0 else ""
        rows.append(f"{s},0.001,{loss:.4f},1.0,1234.5,{val},{0.1 * s:.2f}\n")
    path.write_text("".join(rows))


def is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_per_position_plot_single_and_overlaid(tmp_path):
    curve = 5.0 / np.sqrt(np.arange(1, 64))
    single = plot_per_position(curve, tmp_path / "one.png")
    overlaid = plot_per_position(
        {"mesa": curve, "attention": curve * 1.1, "x2": np.concatenate([curve, curve])},
        tmp_path / "sub" / "many.png",
        log_x=False,
        smooth=4,
        train_len=64,
    )
    binned = plot_per_position({"a": curve, "b": curve[:10]}, tmp_path / "binned.png", bins_per_decade=10, train_len=32)
    assert is_png(single) and is_png(overlaid) and is_png(binned) and overlaid.parent.name == "sub"


def test_loss_curve_plot_from_run_dirs_files_and_mappings(tmp_path):
    (tmp_path / "a").mkdir()
    write_metrics(tmp_path / "a" / "metrics.csv", 30, 6.0)
    write_metrics(tmp_path / "b.csv", 20, 5.0)
    out = plot_loss_curves(
        {"a": tmp_path / "a", "b": tmp_path / "b.csv", "c": read_metrics(tmp_path / "b.csv")},
        tmp_path / "loss.png",
        x="elapsed",
        log_y=True,
    )
    assert is_png(out) and is_png(plot_loss_curves({"a": tmp_path / "a"}, tmp_path / "smooth.png", smooth=5))


def test_read_metrics_parses_empty_cells_as_nan(tmp_path):
    write_metrics(tmp_path / "metrics.csv", 10, 4.0)
    metrics = read_metrics(tmp_path)
    assert set(metrics) == {"step", "lr", "train_loss", "grad_norm", "tokens_per_s", "val_loss", "elapsed"}
    assert metrics["step"].tolist() == list(range(1, 11))
    assert np.isnan(metrics["val_loss"][0]) and np.isfinite(metrics["val_loss"][4])


def test_smoothing_helpers():
    np.testing.assert_allclose(moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(moving_average(np.array([1.0, np.nan, 3.0]), 2), [1.0, 1.0, 3.0])
    x, y = log_binned(np.arange(1.0, 1001.0), per_decade=10)  # value = position: bin means sit inside their bins
    np.testing.assert_allclose(x[:4], [1, 2, 3, 4])  # bins of one at the start
    np.testing.assert_allclose(y[:4], [1, 2, 3, 4])
    assert len(x) < 40 and np.all(np.diff(x) > 0) and np.all(np.diff(y) > 0) and y[-1] > 800
    assert np.all(np.abs(np.log(y / x)) < 0.15)  # arithmetic vs geometric centre of a 1/10-decade bin


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="expected a path ending in .png"):
        plot_per_position(np.ones(5), tmp_path / "x.pdf")
    with pytest.raises(ValueError, match="expected at least one curve"):
        plot_per_position({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"curve 'a' must be a non-empty 1-D array, got shape \[2, 2\]"):
        plot_per_position({"a": np.ones((2, 2))}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="expected smooth to be None or an integer >= 1, got 0"):
        plot_per_position(np.ones(5), tmp_path / "x.png", smooth=0)
    with pytest.raises(ValueError, match="expected bins_per_decade to be None or an integer >= 1, got 2.5"):
        plot_per_position(np.ones(5), tmp_path / "x.png", bins_per_decade=2.5)
    with pytest.raises(ValueError, match="expected at least one run"):
        plot_loss_curves({}, tmp_path / "x.png")
    write_metrics(tmp_path / "m.csv", 3, 1.0)
    with pytest.raises(ValueError, match=r"run 'm' has no column 'tokens'; columns: \["):
        plot_loss_curves({"m": tmp_path / "m.csv"}, tmp_path / "x.png", x="tokens")
    with pytest.raises(ValueError, match="does not exist"):
        read_metrics(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("step,lr\n1,0.1\n")
    with pytest.raises(ValueError, match=r"missing columns \['train_loss'\]"):
        read_metrics(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("step,train_loss\n1,abc\n")
    with pytest.raises(ValueError, match=r"bad2.csv:2: column 'train_loss' holds 'abc', not a number"):
        read_metrics(tmp_path / "bad2.csv")
