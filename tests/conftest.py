import json
import os

import numpy as np
import pytest
from hypothesis import settings

# CI draws the same examples on every run, so a red build is reproducible and
# never a coin flip; HYPOTHESIS_PROFILE=explore searches fresh examples locally.
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.register_profile("explore", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def rank_sum(n: int, seed: int = 0) -> np.ndarray:
    """Difficulty-like scores: the sum of the ascending ranks of two correlated measures."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n)
    b = 0.5 * a + rng.standard_normal(n)
    ra = np.empty(n)
    rb = np.empty(n)
    ra[np.argsort(a)] = np.arange(n)
    rb[np.argsort(b)] = np.arange(n)
    return ra + rb


@pytest.fixture
def compare_argv():
    """``argv(out, options)``: ``mombs compare`` arguments for random vs mixed, seed 0, one job,
    with each of ``options`` as a ``--set``."""

    def argv(out, options: dict) -> list:
        return [
            "compare",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "strategies=[random, mixed]",
            "--set",
            "seeds=[0]",
            "--set",
            "jobs=1",
        ] + [a for k, v in options.items() for a in ("--set", f"{k}={v}")]

    return argv


@pytest.fixture
def interrupt_after_epoch(monkeypatch):
    """``interrupt(cfg, out, epoch)``: runs ``cfg`` into ``out`` and raises
    KeyboardInterrupt right after epoch ``epoch``'s checkpoint is written, as a
    Ctrl-C or a killed job would leave the run."""
    import mombs.train.runner as runner
    from mombs.train import run

    original = runner._checkpoint

    def interrupt(cfg, out, epoch):
        def checkpoint_then_die(c, path, cfg_, e, *rest):
            original(c, path, cfg_, e, *rest)
            if e == epoch:
                raise KeyboardInterrupt

        monkeypatch.setattr(runner, "_checkpoint", checkpoint_then_die)
        try:
            with pytest.raises(KeyboardInterrupt):
                run(cfg, out)
        finally:
            monkeypatch.setattr(runner, "_checkpoint", original)

    return interrupt


@pytest.fixture
def scores_1k():
    return rank_sum(1000)


@pytest.fixture(scope="session")
def digits_model():
    """A small CNN trained briefly on digits with 20% flipped labels and a rare class.

    Returns ``(model, x, y, flipped, rare)``: ``y`` holds the noisy labels;
    ``flipped`` and ``rare`` are bool masks of the planted samples.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    g = np.random.default_rng(0)
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    flipped = g.random(len(y)) < 0.2
    y[flipped] = (y[flipped] + torch.from_numpy(g.integers(1, 10, flipped.sum()))) % 10
    # Class 9 becomes rare: keep 10 of its correctly labelled samples.
    nines = np.flatnonzero((y.numpy() == 9) & ~flipped)
    keep = np.ones(len(y), dtype=bool)
    keep[nines[10:]] = False
    x, y, flipped = x[keep], y[keep], flipped[keep]
    rare = (y.numpy() == 9) & ~flipped

    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential()
    model.add_module(
        "features",
        nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ),
    )
    model.add_module("head", nn.Sequential(nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, 10)))
    with torch.no_grad():
        for p in model.parameters():  # a private, seeded init: the global RNG stays untouched
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / p[0].numel()) ** 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(6):
        model.train()
        for b in torch.randperm(len(y), generator=gen).split(32):
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model, x, y, flipped, rare


def check_run_files(run_dir, res: dict, member_key: str) -> None:
    """A dense run's files say what they are for, checked against its own assessment.npz.

    ``noise_detection`` scores the poorly-labeled quadrant and the losses
    against the planted truth ``assessment.npz[member_key]`` (recomputed here
    by hand and with scikit-learn), and ``flagged.npz`` holds exactly the
    highest-loss training samples of each quadrant, with their losses.
    """
    from sklearn.metrics import roc_auc_score

    from mombs import QUADRANTS

    z = np.load(run_dir / "assessment.npz")
    f = np.load(run_dir / "flagged.npz")
    codes, loss, member = z["codes"], z["loss"], z[member_key].astype(bool)
    poor = codes == QUADRANTS.index("poorly-labeled")
    assert {q: int((codes == i).sum()) for i, q in enumerate(QUADRANTS)} == res["quadrant_counts"]
    found = res["noise_detection"]
    assert found["flagged"] == poor.sum() and found["base_rate"] == pytest.approx(member.mean())
    assert found["precision"] == pytest.approx(member[poor].mean()) and found["recall"] == pytest.approx(
        poor[member].mean()
    )
    assert found["auroc_loss"] == pytest.approx(roc_auc_score(member, loss))
    for c in np.unique(codes):
        of_c = np.flatnonzero(codes == c)
        top = of_c[np.argsort(-loss[of_c], kind="stable")[:6]]
        assert sorted(f["index"][f["codes"] == c]) == sorted(top)
    np.testing.assert_array_equal(f["loss"], loss[f["index"]])


def check_dense_diagnose(run_dir, n: int, score_columns: set, capsys) -> None:
    """``mombs diagnose`` on a segmentation or detection run folder: the table has a row per
    training image with the run's label-issue scores, ranks them, and the report has its pictures."""
    import csv

    from mombs import cli

    z = np.load(run_dir / "label_issues.npz")
    assert {f"score_{c}" for c in score_columns} <= set(z.files) and z["kind"].shape == (n,)
    capsys.readouterr()
    assert cli.main(["diagnose", str(run_dir)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["samples"] == n and out["history"] is None
    with open(run_dir / "diagnose" / "data_quality.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n and score_columns | {
        "suspected_error",
        "corruption",
        "wrong_label",
        "quadrant",
        "label_issue_rank",
        "flagged",
        "path",
    } <= set(rows[0])
    top = min(rows, key=lambda r: int(r["label_issue_rank"]))
    assert float(top["label_issue_score"]) == max(float(r[out["score"]]) for r in rows)
    report = (run_dir / "diagnose" / "report.md").read_text()
    assert "](suspect.png)" in report and (run_dir / "diagnose" / "suspect.png").stat().st_size > 1000
    assert "Per class" not in report
    # another of the run's scores, by name; an unknown one is refused naming the run's scores
    assert cli.main(["diagnose", str(run_dir), "--score", "loss", "--no-images", "--out", str(run_dir / "d2")]) == 0
    capsys.readouterr()
    with pytest.raises(
        SystemExit,
        match=r"^mombs: score='aum' is not a score of this \w+ run; choose one of "
        r"\['auto', .*'loss', 'difficulty', 'quadrant_score'\]$",
    ):
        cli.main(["diagnose", str(run_dir), "--score", "aum"])
