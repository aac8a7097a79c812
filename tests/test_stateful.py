"""Mid-epoch resume with torchdata's StatefulDataLoader after the pivot: the documented guarantee."""

import importlib.util
import pathlib
import warnings

import pytest

pytest.importorskip("torchdata.stateful_dataloader")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("stateful_resume", ROOT / "examples" / "stateful_resume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resume_mid_epoch_after_the_pivot_replays_the_uninterrupted_batches(workers):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchdata's own deprecation notice
        report = _example().main(
            [
                "--num-workers",
                str(workers),
                "--n",
                "120",
                "--epochs",
                "4",
                "--pivot-epoch",
                "1",
                "--stop-epoch",
                "2",
                "--stop-batch",
                "3",
            ]
        )
    assert report["planned_epochs"] == [1, 2, 3]
    assert report["same_batches"] and report["same_scores"]


def test_without_the_loaders_state_the_resume_goes_wrong():
    # The control: the check above can fail. A fresh loader replays the epoch from its start.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = _example().main(
            ["--n", "120", "--epochs", "4", "--stop-epoch", "2", "--stop-batch", "3", "--skip-loader-state"]
        )
    assert not report["same_batches"]
