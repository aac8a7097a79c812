"""MoMBSTrainer: a tiny random BERT trained on the CPU under the Hugging Face Trainer."""

import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import BertConfig, BertForSequenceClassification, TrainerCallback, TrainingArguments  # noqa: E402

import mombs  # noqa: E402
from mombs.integrations.transformers import INDEX_KEY, MoMBSTrainer, sequence_classification_loss  # noqa: E402

N, BATCH, EPOCHS, PIVOT, LENGTH = 192, 8, 4, 1, 12
STEPS = N // BATCH  # 24 steps an epoch
SAVE_STEPS = STEPS // 2  # checkpoints mid-epoch and at each epoch's last step
EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "hf_trainer.py")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # A model this small trains fastest on one thread; two threads on a busy
    # two-core machine spin against each other and run tens of times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Tokens(Dataset):
    """Dict items: the class decides which half of the vocabulary most tokens come from; 20% labels flipped.

    ``note`` is a field the model does not take, which ``remove_unused_columns`` must drop.
    """

    def __init__(self, n=N, seed=0, extra=None):
        g = np.random.default_rng(seed)
        y = g.integers(0, 2, n)
        side = np.where(g.random((n, LENGTH)) < 0.75, y[:, None], 1 - y[:, None])
        self.x = 2 + side * 30 + g.integers(0, 30, (n, LENGTH))
        self.flipped = g.random(n) < 0.2
        self.y = np.where(self.flipped, 1 - y, y)
        self.extra = extra or {}

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {
            "input_ids": torch.tensor(self.x[i]),
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": int(self.y[i]),
            "note": f"sample {i}",
            **self.extra,
        }


class TupleItems(Tokens):
    def __getitem__(self, i):
        return torch.tensor(self.x[i]), int(self.y[i])


def tiny_bert(seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BertForSequenceClassification(
            BertConfig(
                vocab_size=64,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=LENGTH,
                num_labels=2,
            )
        )


def training_args(out, **kw):
    base = dict(
        per_device_train_batch_size=BATCH,
        num_train_epochs=EPOCHS,
        learning_rate=5e-3,
        optim="adamw_torch",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    return TrainingArguments(output_dir=str(out), **{**base, **kw})


class Recording(MoMBSTrainer):
    """Records the indices that reach compute_loss in training, by epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.batches.setdefault(self.sampler.epoch, []).append(inputs[INDEX_KEY].tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class PlannedFrom(TrainerCallback):
    """The scores each epoch is planned from: the sampler's at the epoch's start."""

    def __init__(self, sampler):
        self.sampler, self.scores = sampler, {}

    def on_epoch_begin(self, args, state, control, **kwargs):
        scores = self.sampler.scores
        self.scores[int(state.epoch)] = None if scores is None else scores.copy()


def make_trainer(out, *, cls=Recording, dataset=None, sampler=None, at="bert.pooler", assessor_options=None, **args_kw):
    dataset = dataset if dataset is not None else Tokens()
    sampler = sampler or mombs.MixedOrderBatchSampler(dataset, BATCH, pivot_epoch=PIVOT, seed=0)
    planned_from = PlannedFrom(sampler)
    trainer = cls(
        model=tiny_bert(),
        args=training_args(out, **args_kw),
        train_dataset=dataset,
        callbacks=[planned_from],
        sampler=sampler,
        at=at,
        assessor_options={"k": 4, **(assessor_options or {})},
    )
    trainer.planned_from = planned_from
    return trainer


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    trainer = make_trainer(out, save_strategy="steps", save_steps=SAVE_STEPS)
    trainer.train()
    return trainer, out


def _batch_sum_std(scores, batches):
    return float(np.std([scores[b].sum() for b in batches]))


# ---------------------------------------------------------------------- #
# training


def test_indices_reach_compute_loss_in_the_planned_order(full_run):
    trainer, _ = full_run
    assert sorted(trainer.batches) == list(range(EPOCHS))
    for epoch, batches in trainer.batches.items():
        assert len(batches) == STEPS and all(len(b) == BATCH for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(N))  # every sample once
        scores = trainer.planned_from.scores[epoch]
        assert (scores is not None) == (epoch >= PIVOT)
        # Exactly the sampler's plan: nothing re-sharded, re-batched or re-ordered it on the way.
        plan = mombs.plan_batches(
            np.zeros(N) if scores is None else scores,
            BATCH,
            order="random" if scores is None else "mixed",
            seed=0,
            epoch=epoch,
        )
        assert batches == [b.tolist() for b in plan]


def test_planned_epochs_are_balanced_and_differ(full_run):
    trainer, _ = full_run
    rng = np.random.default_rng(0)
    seen = []
    for epoch in range(PIVOT, EPOCHS):
        scores, batches = trainer.planned_from.scores[epoch], trainer.batches[epoch]
        random_std = np.mean([_batch_sum_std(scores, rng.permutation(N).reshape(-1, BATCH)) for _ in range(200)])
        assert _batch_sum_std(scores, batches) < 0.1 * random_std
        seen.append({frozenset(b) for b in batches})
    seen.append({frozenset(b) for b in trainer.batches[0]})
    for a in range(len(seen)):
        for b in range(a + 1, len(seen)):
            assert seen[a] != seen[b]


def test_every_sample_is_measured_and_checkpoints_carry_the_state(full_run):
    trainer, out = full_run
    assert trainer.assessor.tracker.measured().all()
    assert trainer.assessor.tracker.loss_epoch.min() == EPOCHS - 1  # losses observed in the last epoch
    assert trainer.mombs_callback.ended and trainer.mombs_callback.epoch == EPOCHS - 1
    for step in range(SAVE_STEPS, EPOCHS * STEPS + 1, SAVE_STEPS):
        assert os.path.isfile(os.path.join(out, f"checkpoint-{step}", "mombs_state.pt"))


@pytest.mark.parametrize("step", [STEPS + SAVE_STEPS, 2 * STEPS], ids=["mid-epoch", "epoch-last-step"])
def test_resume_trains_the_batches_of_an_uninterrupted_run(full_run, tmp_path, step):
    full, out = full_run
    trainer = make_trainer(tmp_path)
    trainer.train(resume_from_checkpoint=os.path.join(out, f"checkpoint-{step}"))
    first, done = divmod(step, STEPS)
    assert trainer.batches[first] == full.batches[first][done:]
    for epoch in range(first + 1, EPOCHS):
        assert trainer.batches[epoch] == full.batches[epoch]
    np.testing.assert_allclose(trainer.assessor.scores(), full.assessor.scores())


def test_the_loader_keeps_the_samplers_batches_on_the_device(tmp_path):
    trainer = make_trainer(tmp_path)
    loader = trainer.get_train_dataloader()
    assert loader.batch_sampler is trainer.sampler  # no BatchSamplerShard around it
    assert len(loader) == len(trainer.sampler) == STEPS
    batch = next(iter(loader))
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", INDEX_KEY]  # "note" dropped
    assert batch[INDEX_KEY].dtype == torch.long and batch[INDEX_KEY].device == trainer.args.device
    assert batch["input_ids"].device == trainer.args.device


def test_gradient_accumulation_divides_the_batch_mean(tmp_path):
    trainer = make_trainer(tmp_path, gradient_accumulation_steps=2)
    trainer.current_gradient_accumulation_steps = 2  # as the training loop sets it
    trainer.assessor.start_epoch(PIVOT)  # active, so observe records
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.random.fork_rng():  # the same dropout masks in both forwards
        torch.manual_seed(1)
        with torch.no_grad():
            mean = trainer.compute_loss(trainer.model.train(), dict(batch))
        torch.manual_seed(1)
        trainer.assessor.start_epoch(PIVOT)  # the batch is observed again: observe() refuses that within an epoch
        step_loss = trainer.training_step(trainer.model, dict(batch))
    torch.testing.assert_close(step_loss, mean / 2)
    idx = batch[INDEX_KEY].numpy()
    assert (trainer.assessor.tracker.loss_epoch[idx] == PIVOT).all()


def test_a_per_sample_loss_fn_feeds_training_and_the_assessor(tmp_path):
    calls = []

    def loss_fn(outputs, labels):
        calls.append(len(labels))
        return 2 * F.cross_entropy(outputs.logits, labels, reduction="none")

    dataset = Tokens(48)
    sampler = mombs.MixedOrderBatchSampler(dataset, BATCH, pivot_epoch=1)  # epoch 0 measures for epoch 1
    trainer = Recording(
        model=tiny_bert(),
        args=training_args(tmp_path, num_train_epochs=1),
        train_dataset=dataset,
        sampler=sampler,
        at="bert.pooler",
        per_sample_loss_fn=loss_fn,
        assessor_options={"k": 2, "schedule": "paper"},
    )  # "paper" measures losses in a pass too
    trainer.train()
    assert calls.count(BATCH) == len(dataset) // BATCH  # the training steps
    assert sum(calls) == 2 * len(dataset)  # and the assessment pass over all samples
    assert trainer.assessor.tracker.measured().all()


def test_sequence_classification_loss_reads_the_problem_type():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(
        sequence_classification_loss({"logits": logits}, torch.tensor([0, 0])),
        F.cross_entropy(logits, torch.tensor([0, 0]), reduction="none"),
    )
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(
        sequence_classification_loss(logits, targets),
        F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1),
    )
    torch.testing.assert_close(
        sequence_classification_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([0.5, 3.0])), torch.tensor([0.25, 0.0])
    )
    with pytest.raises(ValueError, match="fit no classification"):
        sequence_classification_loss(logits, torch.tensor([[1, 2, 3], [1, 2, 3]]))


# ---------------------------------------------------------------------- #
# misconfigurations


MISCONFIGURED = {
    "size": (dict(sampler=mombs.MixedOrderBatchSampler(N + 1, BATCH)), "sampler covers 193 samples"),
    "batch size": (dict(sampler=mombs.MixedOrderBatchSampler(N, 4)), "sampler.batch_size=4"),
    "replicas": (
        dict(sampler=mombs.MixedOrderBatchSampler(N, BATCH, num_replicas=2, rank=1)),
        "num_replicas=2, rank=1",
    ),
    "drop_last": (dict(sampler=mombs.MixedOrderBatchSampler(N, BATCH, drop_last=True)), "dataloader_drop_last"),
    "not a mombs sampler": (
        dict(sampler=torch.utils.data.BatchSampler(range(N), BATCH, False)),
        "must be a mombs.MixedOrderBatchSampler",
    ),
    "tuple items": (dict(dataset=TupleItems()), "needs mappings"),
    "index collision": (dict(dataset=Tokens(extra={INDEX_KEY: 0})), "already have a 'mombs_index' field"),
    "reserved option": (dict(assessor_options={"collate_fn": None}), "may not set"),
    "unknown option": (dict(assessor_options={"kk": 8}), "unknown names"),
    "unknown at": (dict(at="bert.nope"), "not a submodule"),
    "sampling strategy": (dict(train_sampling_strategy="group_by_length"), "train_sampling_strategy"),
}


@pytest.mark.parametrize("case", list(MISCONFIGURED))
def test_misconfigurations_are_clear_errors(tmp_path, case):
    kw, match = MISCONFIGURED[case]
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, **kw)


def test_trainer_only_options_are_refused(tmp_path):
    dataset = Tokens()
    sampler = mombs.MixedOrderBatchSampler(dataset, BATCH)
    for kw, match in (
        (dict(compute_loss_func=lambda *a, **k: 0), "compute_loss_func"),
        (dict(model_init=tiny_bert), "model_init"),
    ):
        with pytest.raises(ValueError, match=match):
            MoMBSTrainer(
                model=tiny_bert(),
                args=training_args(tmp_path),
                train_dataset=dataset,
                sampler=sampler,
                at="bert.pooler",
                **kw,
            )


def test_a_training_batch_without_indices_is_a_clear_error(tmp_path):
    trainer = make_trainer(tmp_path, cls=MoMBSTrainer)
    batch = next(iter(trainer.get_train_dataloader()))
    del batch[INDEX_KEY]
    with pytest.raises(ValueError, match="has no 'mombs_index' entry"):
        trainer.compute_loss(trainer.model.train(), batch)
    # Evaluation needs no indices: the Trainer's own loss.
    loss = trainer.compute_loss(trainer.model.eval(), batch)
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------- #
# the example


class CountHooks(TrainerCallback):
    def __init__(self):
        self.during = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.during.append(_hooks(model))


def _hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_training_leaves_no_forward_hook_on_the_model(tmp_path):
    data = Tokens(n=32)
    trainer = make_trainer(
        tmp_path, dataset=data, num_train_epochs=2, assessor_options={"k": 2, "schedule": "train-entropy"}
    )
    count = CountHooks()
    trainer.add_callback(count)
    left = []
    for _ in range(2):  # a second train() puts the hook on again, and takes it off again
        trainer.train()
        left.append(_hooks(trainer.model))
    assert left == [0, 0]
    assert set(count.during) == {1} and len(count.during) == 2 * 2 * 4
    assert trainer.assessor.tracker.measured("uncertainty").all()  # captured in training


def test_the_example_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("hf_trainer_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(
        ["--epochs", "2", "--train-size", "64", "--pivot-epoch", "1", "--k", "2", "--output-dir", str(tmp_path)]
    )
    assert 0.0 <= result["accuracy"] <= 1.0
    assert "precision" in result  # every sample measured, quadrants computed


# ---------------------------------------------------------------------- #
# two real processes


def _ddp_worker(rank, world, port, out_dir):
    import json

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    args = training_args(out_dir, num_train_epochs=3, ddp_backend="gloo")  # starts torch.distributed
    dataset = Tokens()
    sampler = mombs.MixedOrderBatchSampler(dataset, BATCH, pivot_epoch=PIVOT, seed=0)  # world from the group
    planned_from = PlannedFrom(sampler)
    trainer = Recording(
        model=tiny_bert(),
        args=args,
        train_dataset=dataset,
        callbacks=[planned_from],
        sampler=sampler,
        at="bert.pooler",
        assessor_options={"k": 2},
    )
    trainer.train()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(
            {
                "world": args.world_size,
                "batches": {str(k): v for k, v in trainer.batches.items()},
                "scores": {str(k): None if v is None else v.tolist() for k, v in planned_from.scores.items()},
            },
            fh,
        )
    torch.distributed.barrier()
    # The Trainer leaves the gloo group up; torn down at interpreter exit, its threads can abort the process.
    torch.distributed.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_share_each_planned_epoch_without_double_sharding(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world = 2
    mp.spawn(_ddp_worker, args=(world, port, str(tmp_path)), nprocs=world, join=True)
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert all(run["world"] == world for run in runs)
    for epoch in range(3):
        per_rank = [run["batches"][str(epoch)] for run in runs]
        assert [len(b) for b in per_rank] == [N // (world * BATCH)] * world  # each rank its share, once
        assert sorted(i for batches in per_rank for b in batches for i in b) == list(range(N))
        scores = runs[0]["scores"][str(epoch)]
        assert scores == runs[1]["scores"][str(epoch)]  # the ranks planned from the same synced scores
        if epoch >= PIVOT:
            for rank, batches in enumerate(per_rank):
                plan = mombs.plan_batches(
                    np.asarray(scores), BATCH, order="mixed", seed=0, epoch=epoch, num_replicas=world, rank=rank
                )
                assert batches == [b.tolist() for b in plan]
