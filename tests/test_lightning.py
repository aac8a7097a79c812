"""mombs.integrations.lightning: MoMBSCallback under a real Lightning Trainer on the CPU.

Run as a script (``python tests/test_lightning.py --ddp-worker OUT``) this file is
the two-process DDP job of :func:`test_ddp_two_processes_cover_the_epoch_and_agree`:
Lightning's "ddp" launcher starts the second rank by running the same command again.
"""

import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")

import mombs  # noqa: E402
from mombs.integrations.lightning import MoMBSCallback  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N, BATCH = 200, 8  # 25 batches an epoch
DDP_N, DDP_BATCH, DDP_EPOCHS, DDP_CKPT_STEP = 190, 8, 3, 18  # 12 batches per rank and epoch


def _data(n: int = N, seed: int = 0) -> TensorDataset:
    """Three Gaussian classes in 6 dimensions, 20% of the labels moved to the next class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 6, generator=g) + F.one_hot(y, 3).float().repeat(1, 2) * 1.5
    flip = torch.rand(n, generator=g) < 0.2
    y[flip] = (y[flip] + 1) % 3
    return TensorDataset(x, y)


def _net(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)  # a private init: the global RNG stays untouched
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(nn.Linear(6, 16), nn.ReLU()))
    net.add_module("head", nn.Linear(16, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


class _Module(L.LightningModule):
    """Records each step's (epoch, indices) and each epoch's planning scores."""

    def __init__(self, net, loader_fn, sampler_fn=None, output="dict"):
        super().__init__()
        self.net, self.loader_fn, self.sampler_fn, self.output = net, loader_fn, sampler_fn, output
        self.seen, self.plan = [], {}

    def on_train_epoch_start(self):
        if self.sampler_fn is not None:  # the callbacks' hook ran first: this is what the epoch plans from
            s = self.sampler_fn()
            self.plan[self.current_epoch] = (s.uses_scores(), None if s.scores is None else s.scores.copy())

    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        self.seen.append((self.current_epoch, idx.tolist()))
        loss = F.cross_entropy(self.net(x), y, reduction="none")
        if self.output == "none":
            return None
        if self.output == "mean":
            return loss.mean()
        extra = {
            "dict": (loss, idx),
            "scalar": (loss.mean(), idx),
            "short": (loss, idx[:-1]),
            "float-idx": (loss, idx.float()),
        }[self.output]
        return {"loss": loss.mean(), "sample_loss": extra[0], "indices": extra[1]}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self):
        return self.loader_fn()


def _trainer(callbacks, max_epochs=4, **kw):
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **{"enable_checkpointing": False, **kw},
    )


def _parts(loader="plain", pivot=1, output="dict", sampler_as="batch_sampler", num_replicas=None):
    """A module, its callback and its assessor, built from scratch as a new process would."""
    train = mombs.IndexedDataset(_data())
    net = _net()
    sampler = mombs.MixedOrderBatchSampler(
        train, BATCH, pivot_epoch=pivot, seed=3, num_replicas=num_replicas, rank=None if num_replicas is None else 0
    )
    assessor = mombs.DifficultyAssessor(net, train, at="features", sampler=sampler, k=4)

    def loader_fn():
        if loader.startswith("stateful"):
            from torchdata.stateful_dataloader import StatefulDataLoader

            return StatefulDataLoader(train, batch_sampler=sampler, num_workers=2 if loader.endswith("2") else 0)
        if sampler_as == "sampler":
            return DataLoader(train, sampler=sampler, batch_size=None)
        if sampler_as == "other":  # what Lightning's rebuild under use_distributed_sampler=True leaves
            return DataLoader(train, batch_sampler=mombs.MixedOrderBatchSampler(train, BATCH))
        if sampler_as == "shuffle":
            return DataLoader(train, batch_size=BATCH, shuffle=True)
        return DataLoader(train, batch_sampler=sampler)

    module = _Module(net, loader_fn, lambda: sampler, output=output)
    return module, MoMBSCallback(assessor), assessor


def _epochs(seen) -> dict[int, list[list[int]]]:
    out: dict[int, list[list[int]]] = {}
    for epoch, batch in seen:
        out.setdefault(epoch, []).append(batch)
    return out


def _sum_spread(batches, scores) -> float:
    sums = [scores[b].sum() for b in batches if len(b) == BATCH]
    return float(np.std(sums))


# ---------------------------------------------------------------------- #
# the epoch is driven, and planned epochs are balanced


def test_epochs_differ_and_planned_epochs_are_balanced():
    module, cb, assessor = _parts(pivot=1)
    _trainer([cb], max_epochs=4).fit(module)
    epochs = _epochs(module.seen)
    assert sorted(epochs) == [0, 1, 2, 3]
    for batches in epochs.values():  # every sample once per epoch
        assert sorted(i for b in batches for i in b) == list(range(N))
    as_sets = {e: {frozenset(b) for b in batches} for e, batches in epochs.items()}
    for e1 in range(4):
        for e2 in range(e1 + 1, 4):
            assert len(as_sets[e1] & as_sets[e2]) <= 2, (e1, e2)  # not the same batches again
    assert module.plan[0][0] is False and all(module.plan[e][0] for e in (1, 2, 3))
    for e in (1, 2, 3):
        scores = module.plan[e][1]
        random_spread = _sum_spread(epochs[0], scores)  # epoch 0's random batches, judged by the same scores
        assert _sum_spread(epochs[e], scores) < 0.1 * random_spread
    assert assessor.epoch == 3 and assessor.tracker.measured().all()
    assert cb.sampler.epoch == 3


def test_without_the_callback_lightning_never_moves_a_batch_sampler():
    # The reason for the callback: Lightning's set_epoch reaches dataloader.sampler and
    # batch_sampler.sampler only, so a MixedOrderBatchSampler stays at epoch 0.
    module, _, _ = _parts(pivot=1)
    with pytest.warns(RuntimeWarning, match=r"second whole pass over epoch 0 without set_epoch\(\).*MoMBSCallback"):
        _trainer([], max_epochs=3).fit(module)
    epochs = _epochs(module.seen)
    assert epochs[0] == epochs[1] == epochs[2]


def test_a_skipped_step_is_skipped_and_a_builder_function_is_called_in_setup():
    train = mombs.IndexedDataset(_data())
    built = []

    def build(trainer, pl_module):
        sampler = mombs.MixedOrderBatchSampler(train, BATCH, pivot_epoch=1)
        built.append(mombs.DifficultyAssessor(pl_module.net, train, at="features", sampler=sampler, k=2))
        return built[-1]

    cb = MoMBSCallback(build)
    with pytest.raises(RuntimeError, match="setup"):
        _ = cb.sampler
    module = _Module(_net(), lambda: DataLoader(train, batch_sampler=cb.sampler), output="none")
    with pytest.warns(RuntimeWarning, match=r"200 of 200 samples got no per-sample loss .* called 0 times"):
        _trainer([cb], max_epochs=2).fit(module)  # every step skipped: the epoch's end says so
    assert len(built) == 1 and cb.assessor is built[0]
    assert not cb.assessor.tracker.measured("loss").any()  # nothing observed, nothing raised


# ---------------------------------------------------------------------- #
# the user's network is left as it was found


def _hooks(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in net.modules())


class _CountHooks(L.Callback):
    def __init__(self, net):
        self.net, self.during = net, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.during.append(_hooks(self.net))


@pytest.mark.parametrize("schedule", ["train-features", "train-entropy"])
def test_repeated_fits_leave_no_forward_hook_on_the_network(schedule):
    # Fits 1 and 2 reuse one assessor, fit 3 builds a new one on the same network.
    train = mombs.IndexedDataset(_data(n=48))
    net = _net()
    sampler = mombs.MixedOrderBatchSampler(train, BATCH, pivot_epoch=1)
    count = _CountHooks(net)
    module = _Module(net, lambda: DataLoader(train, batch_sampler=sampler))
    left = []
    for fit in range(3):
        if fit != 1:
            assessor = mombs.DifficultyAssessor(
                net, train, at="features", sampler=sampler, k=2, schedule=schedule, head=net.head
            )
            cb = MoMBSCallback(assessor)
        _trainer([cb, count], max_epochs=2).fit(module)
        left.append(_hooks(net))
        assert assessor.tracker.measured().all()  # the hook captured in the fit: both measures taken
    assert left == [0, 0, 0]
    assert set(count.during) == {1} and len(count.during) == 3 * 2 * 6  # one hook in every step of every fit
    assessor.close()  # closing twice is fine
    assert _hooks(net) == 0


def test_a_failed_fit_leaves_no_forward_hook_on_the_network():
    train = mombs.IndexedDataset(_data(n=48))
    net = _net()
    sampler = mombs.MixedOrderBatchSampler(train, BATCH, pivot_epoch=1)
    assessor = mombs.DifficultyAssessor(
        net, train, at="features", sampler=sampler, k=2, schedule="train-features", head=net.head
    )
    module = _Module(net, lambda: DataLoader(train, batch_sampler=sampler), output="mean")
    with pytest.raises(ValueError, match="must return a dict"):
        _trainer([MoMBSCallback(assessor)], max_epochs=1).fit(module)
    assert _hooks(net) == 0


# ---------------------------------------------------------------------- #
# configurations that Lightning would silently break


@pytest.mark.parametrize(
    "sampler_as, error, match",
    [
        ("sampler", ValueError, "batch_sampler="),
        ("other", RuntimeError, "use_distributed_sampler=False"),
        ("shuffle", ValueError, "no train dataloader"),
    ],
)
def test_a_loader_that_bypasses_the_sampler_is_refused(sampler_as, error, match):
    module, cb, _ = _parts(sampler_as=sampler_as)
    with pytest.raises(error, match=match):
        _trainer([cb], max_epochs=1).fit(module)
    assert module.seen == []  # refused before the first step


@pytest.mark.parametrize(
    "output, match",
    [
        ("mean", "must return a dict with 'sample_loss'"),
        ("scalar", r"'sample_loss' must be a \(B,\) float tensor"),
        ("short", r"'indices' must be \(8,\) integer"),
        ("float-idx", "integer"),
    ],
)
def test_a_training_step_without_per_sample_losses_and_indices_is_refused(output, match):
    module, cb, _ = _parts(output=output)
    with pytest.raises(ValueError, match=match):
        _trainer([cb], max_epochs=1).fit(module)
    assert len(module.seen) == 1  # at the first step, not at the pivot


def test_several_processes_need_use_distributed_sampler_false():
    module, cb, _ = _parts()
    # Lightning keeps the flag on its accelerator connector; the callback reads it there.
    assert _trainer([], use_distributed_sampler=True)._accelerator_connector.use_distributed_sampler is True
    fake = SimpleNamespace(
        world_size=2, global_rank=0, _accelerator_connector=SimpleNamespace(use_distributed_sampler=True)
    )
    with pytest.raises(ValueError, match=r"use_distributed_sampler=False"):
        cb.setup(fake, module, "fit")
    fake._accelerator_connector.use_distributed_sampler = False
    with pytest.raises(ValueError, match=r"num_replicas=1, rank=0 .* world_size=2"):
        cb.setup(fake, module, "fit")  # a sampler built before the process group existed


def test_a_sampler_for_another_world_size_is_refused():
    module, cb, _ = _parts(num_replicas=2)
    with pytest.raises(ValueError, match="num_replicas=2"):
        _trainer([cb], max_epochs=1).fit(module)


def test_an_assessor_on_another_network_is_refused():
    module, cb, _ = _parts()
    module.net = _net(1)  # the assessor still holds the first network
    with pytest.raises(ValueError, match="not a submodule"):
        _trainer([cb], max_epochs=1).fit(module)


def test_arguments_are_checked_at_the_door():
    _, _, assessor = _parts()
    with pytest.raises(ValueError, match="assessor="):
        MoMBSCallback("mombs")
    with pytest.raises(ValueError, match="loss_key=''"):
        MoMBSCallback(assessor, loss_key="")
    with pytest.raises(ValueError, match="must differ"):
        MoMBSCallback(assessor, loss_key="x", indices_key="x")
    bare = mombs.DifficultyAssessor(assessor.model, assessor.dataset, at="features")
    with pytest.raises(ValueError, match="MixedOrderBatchSampler"):
        MoMBSCallback(bare)


# ---------------------------------------------------------------------- #
# checkpoints


def _resume(tmp_path, loader, paths, max_epochs=4):
    """An uninterrupted run that writes checkpoints, then one resumed run per ``(step, path)``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    module, cb, assessor = _parts(loader=loader, pivot=1)
    steps = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=10, save_top_k=-1, filename="{step}")
    epochs = ModelCheckpoint(dirpath=tmp_path / "epochs", save_top_k=-1, filename="{epoch}")
    _trainer([cb, steps, epochs], max_epochs=max_epochs, enable_checkpointing=True).fit(module)
    for step, path in paths:
        resumed, cb2, assessor2 = _parts(loader=loader, pivot=1)
        yield step, path, module, assessor, resumed, assessor2, _trainer([cb2], max_epochs=max_epochs)


def _same_run(module, assessor, resumed, assessor2, step, path):
    assert resumed.seen == module.seen[step:], path
    for key in ("loss", "uncertainty", "loss_epoch", "uncertainty_epoch"):
        assert np.array_equal(getattr(assessor2.tracker, key), getattr(assessor.tracker, key)), (path, key)
    assert all(torch.equal(p, q) for p, q in zip(module.net.parameters(), resumed.net.parameters())), path


# Checkpoints: inside planned epoch 2 (10 of its 25 steps done, step 60); after the last
# step of epoch 1, before its assessment (step 50); at the end of epoch 1 (on_train_epoch_end,
# assessed). "stateful-2": two workers draw batches ahead of the loop, and the checkpoint still
# holds the step trained. "plain": the sampler reports the whole epoch's length, so Lightning
# sizes a resumed epoch right and the restored sampler yields the batches left.
@pytest.mark.parametrize(
    "loader, paths, max_epochs",
    [
        ("stateful", ((60, "step=60.ckpt"), (50, "step=50.ckpt"), (50, "epochs/epoch=1.ckpt")), 4),
        ("stateful-2", ((60, "step=60.ckpt"),), 3),
        ("plain", ((50, "step=50.ckpt"), (50, "epochs/epoch=1.ckpt"), (60, "step=60.ckpt")), 4),
    ],
)
def test_a_resume_gives_the_batches_and_values_of_an_uninterrupted_run(tmp_path, loader, paths, max_epochs):
    for step, path, module, assessor, resumed, assessor2, trainer in _resume(tmp_path, loader, paths, max_epochs):
        trainer.fit(resumed, ckpt_path=tmp_path / path)
        _same_run(module, assessor, resumed, assessor2, step, path)


def test_a_checkpoint_holds_the_steps_trained_and_whether_the_epoch_was_assessed(tmp_path):
    module, cb, _ = _parts(pivot=1)
    trainer = _trainer([cb], max_epochs=1, limit_train_batches=7)
    with pytest.warns(RuntimeWarning, match=r"144 of 200 samples got no per-sample loss"):  # 7 of 25 batches
        trainer.fit(module)
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    state = torch.load(tmp_path / "end.ckpt", weights_only=False)["callbacks"][cb.state_key]
    assert state["sampler"]["epoch"] == 0 and state["sampler"]["batches_done"] == 7
    assert state["ended_epoch"] == 0 and state["assessor"]["epoch"] == 0


# ---------------------------------------------------------------------- #
# two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_main(out_dir: str) -> None:
    """One rank of a Lightning "ddp" run on the CPU (gloo); writes what it saw."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    train = mombs.IndexedDataset(_data(DDP_N, seed=1))

    def build(trainer, pl_module):  # the process group exists by now: the sampler reads it
        sampler = mombs.MixedOrderBatchSampler(train, DDP_BATCH, pivot_epoch=1, seed=5)
        return mombs.DifficultyAssessor(pl_module.net, train, at="features", sampler=sampler, k=2)

    cb = MoMBSCallback(build)
    module = _Module(_net(), lambda: DataLoader(train, batch_sampler=cb.sampler), lambda: cb.sampler)
    ckpt = ModelCheckpoint(dirpath=out_dir, every_n_train_steps=DDP_CKPT_STEP, save_top_k=-1, filename="{step}")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        use_distributed_sampler=False,
        max_epochs=DDP_EPOCHS,
        callbacks=[cb, ckpt],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    try:
        trainer.fit(module)
        s, t = cb.sampler, cb.assessor.tracker
        with open(os.path.join(out_dir, f"rank{trainer.global_rank}.json"), "w") as fh:
            json.dump(
                {
                    "rank": s.rank,
                    "world": s.num_replicas,
                    "seen": module.seen,
                    "plan": {e: [p[0], None if p[1] is None else p[1].tolist()] for e, p in module.plan.items()},
                    "scores": cb.assessor.scores().tolist(),
                    "loss": t.loss.tolist(),
                    "uncertainty": t.uncertainty.tolist(),
                },
                fh,
            )
    finally:
        # Lightning leaves the gloo group up after fit; torn down at interpreter exit, its threads
        # can abort the process ("terminate called without an active exception", exit -6).
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.mark.distributed
def test_ddp_two_processes_cover_the_epoch_and_agree(tmp_path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--ddp-worker", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert (r0["rank"], r0["world"], r1["rank"], r1["world"]) == (0, 2, 1, 2)
    e0, e1 = _epochs(r0["seen"]), _epochs(r1["seen"])
    assert sorted(e0) == sorted(e1) == list(range(DDP_EPOCHS))
    for epoch in range(DDP_EPOCHS):
        assert len(e0[epoch]) == len(e1[epoch])  # the same number of steps, or DDP would hang
        both = [i for b in e0[epoch] + e1[epoch] for i in b]
        assert sorted(both) == list(range(DDP_N)), epoch  # together: every sample once
    assert e0[1] != e0[2]
    # After each merge both ranks hold the same values, so they plan from the same scores.
    assert r0["scores"] == r1["scores"] and r0["loss"] == r1["loss"] and r0["uncertainty"] == r1["uncertainty"]
    for epoch in (1, 2):
        assert r0["plan"][str(epoch)] == r1["plan"][str(epoch)] and r0["plan"][str(epoch)][0] is True
        scores = np.array(r0["plan"][str(epoch)][1])
        planned = [b for b in e0[epoch] + e1[epoch] if len(b) == DDP_BATCH]
        random = [b for b in e0[0] + e1[0] if len(b) == DDP_BATCH]
        assert np.std([scores[b].sum() for b in planned]) < 0.1 * np.std([scores[b].sum() for b in random])
    # A mid-epoch checkpoint (written by rank 0) holds the losses both ranks recorded so far.
    state = torch.load(tmp_path / f"step={DDP_CKPT_STEP}.ckpt", weights_only=False)["callbacks"]["MoMBSCallback"]
    steps_in = DDP_CKPT_STEP - len(e0[0])  # steps of epoch 1 done at the checkpoint
    done = sorted(i for b in e0[1][:steps_in] + e1[1][:steps_in] for i in b)
    loss_epoch = state["assessor"]["tracker"]["loss_epoch"].numpy()
    assert np.flatnonzero(loss_epoch == 1).tolist() == done
    assert state["sampler"]["epoch"] == 1 and state["sampler"]["batches_done"] == steps_in


# ---------------------------------------------------------------------- #
# the example


def test_the_example_runs(capsys):
    example = runpy.run_path(str(ROOT / "examples" / "lightning_fit.py"), run_name="lightning_fit_example")
    result = example["main"](["--epochs", "2", "--pivot-epoch", "1"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and "planned=False" in lines[0] and "planned=True" in lines[1]
    # the planned epoch is balanced: its batches' difficulty sums are nearly equal, random ones' are not
    mixed, rand = result["balance"][1]
    assert list(result["balance"]) == [1] and mixed < 0.05 * rand, result["balance"]
    # the poorly-labeled quadrant catches the planted wrong labels well above their base rate
    assert result["precision"] > 1.5 * result["base_rate"] and result["recall"] > 0.2, result
    assert 0.5 < result["accuracy"] <= 1.0  # ten digit classes: chance is 0.1


if __name__ == "__main__" and sys.argv[1:2] == ["--ddp-worker"]:
    _ddp_main(sys.argv[2])
