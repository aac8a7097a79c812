"""The report's plots read well: a labelled log loss axis, small quadrants on top, no empty panels."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np

from mombs import QUADRANTS, quadrants
from mombs.plots import scatter_figure
from mombs.recipes import get_recipe
from mombs.report import _curves


def _run(strategy, fits):
    curves = {"val_top1": [0.5, 0.6, 0.7]}
    if fits is not None:
        curves["noisy_fit"] = fits
    return {"dataset": "d", "batch_size": 16, "loss": "ce", "strategy": strategy, "curves": curves}


def test_the_loss_axis_is_logarithmic_with_labelled_decades_and_small_quadrants_on_top():
    rng = np.random.default_rng(0)
    loss = 10 ** rng.uniform(-4, 1, 500)
    loss[:3] = 0.0  # exact zeros stay on the plot
    unc = rng.random(500)
    q = quadrants(loss, unc, loss_quantile=0.9, uncertainty_quantile=0.1)  # two small quadrants
    fig = scatter_figure(loss, unc, q.codes, q.codes == 0, "label flipped", "t")
    ax = fig.axes[0]
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    decades = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ax.get_xscale() == "log" and len(decades) >= 4  # not just "0" and "10^0"
    by_size = sorted(range(len(QUADRANTS)), key=lambda c: -int((q.codes == c).sum()))
    z = {c.get_label().split(" (")[0]: c.get_zorder() for c in ax.collections}
    assert [z[QUADRANTS[c]] for c in by_size] == sorted(z.values())  # smallest drawn last, on top
    plt.close(fig)


def test_no_memorization_panel_without_label_noise(tmp_path):
    notes = get_recipe("classification").report_notes([])
    _curves([_run("random", None), _run("mixed", None)], tmp_path, notes)
    narrow = matplotlib.image.imread(tmp_path / "curves.png").shape[1]
    _curves([_run("random", [0.1, 0.2, 0.3]), _run("mixed", [0.1, 0.1, 0.2])], tmp_path, notes)
    wide = matplotlib.image.imread(tmp_path / "curves.png").shape[1]
    assert narrow < 0.6 * wide  # one panel against two
