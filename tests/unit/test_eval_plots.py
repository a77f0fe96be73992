"""The per-modality bar chart: every bar carries its value, and "no ground truth" is not drawn as 0.0."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from medrov.model.evaluate import _modality_figure, _plots  # noqa: E402


def _group(v: float) -> dict:
    return {"map50": v, "map50_95": v / 2, "classes": 1}


RESULT = {
    "split": "test",
    "modality": {
        "ct": {"all": _group(0.012), "base": _group(0.024), "novel": _group(0.0)},  # novel scored, and scored zero
        "xray": {"all": _group(0.5), "base": _group(0.00012)},  # no novel class has ground truth in xray
    },
}


def test_bars_are_labelled_and_missing_ground_truth_is_hatched():
    fig = _modality_figure(RESULT)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]  # bar_label's value labels and the "no GT" markers
    plt.close(fig)
    # five scored bars, each with its value (the 0.0 novel bar of ct included), and one "no GT" marker (xray novel)
    assert sorted(texts) == sorted(["0.012", "0.024", "0.000", "0.500", "1.2e-04", "no GT"]), texts
    hatched = [p for p in ax.patches if p.get_hatch()]
    solid = [p for p in ax.patches if not p.get_hatch()]
    assert len(hatched) == 1 and not hatched[0].get_fill()
    assert len(solid) == 5
    # the zero bar is a real bar of height 0, the placeholder sits elsewhere and is not mistaken for a score
    assert sorted(round(p.get_height(), 3) for p in solid) == [0.0, 0.0, 0.012, 0.024, 0.5]
    assert hatched[0].get_x() > max(p.get_x() for p in solid if p.get_height() == 0.0)


def test_plots_write_both_pngs(tmp_path):
    _plots({"_curves": None}, RESULT, names={}, novel=set(), out=tmp_path)
    assert (tmp_path / "pr_curve.png").stat().st_size > 1000
    assert (tmp_path / "map50_per_modality.png").stat().st_size > 1000
