"""MoMBS in PyTorch Lightning: a small CNN on scikit-learn's digits with 30% noisy labels.

Runs offline on the CPU in about half a minute:

    python examples/lightning_fit.py --epochs 8
    python examples/lightning_fit.py --epochs 8 --order random   # the baseline

The lines mombs adds to a LightningModule and a Trainer are marked ``# mombs``:
``training_step`` returns the per-sample losses and the batch's indices beside
the loss, the train dataloader takes the sampler as ``batch_sampler=``, and
``MoMBSCallback`` drives the assessor. For several processes (DDP), see
``mombs.integrations.lightning.MoMBSCallback``: the sampler is built once the
process group exists.
"""

import argparse
import os
import sys

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plain_loop import SmallCNN, batch_balance, digits_with_noise  # noqa: E402

import mombs  # noqa: E402
from mombs.integrations.lightning import MoMBSCallback  # noqa: E402


class DigitsModule(L.LightningModule):
    def __init__(self, train, test_set, sampler, lr=0.01):
        super().__init__()
        self.net = SmallCNN()
        self.train_set, self.test_set, self.sampler, self.lr = train, test_set, sampler, lr
        self.balance = {}  # epoch -> (std of the batches' difficulty sums, std of random batches')

    def on_train_epoch_start(self):
        # MoMBSCallback's hook ran first: these are the scores this epoch is planned from.
        self.planned_from = self.sampler.scores if self.sampler.uses_scores() else None
        self.batches = []

    def training_step(self, batch, batch_idx):
        idx, x, y = batch  # mombs: IndexedDataset items
        loss = F.cross_entropy(self.net(x), y, reduction="none")
        self.batches.append(idx.cpu().numpy())  # to show the balance
        return {"loss": loss.mean(), "sample_loss": loss.detach(), "indices": idx}  # mombs

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_top1", (self.net(x).argmax(1) == y).float().mean())

    def on_train_epoch_end(self):
        acc = self.trainer.callback_metrics.get("test_top1", torch.tensor(float("nan")))
        print(f"epoch {self.current_epoch:3d}  test top-1 {acc:.3f}  planned={self.sampler.uses_scores()}", flush=True)
        if self.planned_from is not None:
            self.balance[self.current_epoch] = batch_balance(self.batches, self.planned_from, seed=self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_sampler=self.sampler)  # mombs: batch_sampler=, not sampler=

    def val_dataloader(self):
        return DataLoader(self.test_set, batch_size=256)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pivot-epoch", type=int, default=3)
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--order", default="mixed", choices=mombs.ORDERS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)  # the script's own choice; the library never seeds globally
    train_set, test_set, flipped = digits_with_noise(args.noise, args.seed)
    train = mombs.IndexedDataset(train_set)  # mombs
    sampler = mombs.MixedOrderBatchSampler(
        train, args.batch_size, order=args.order, pivot_epoch=args.pivot_epoch, seed=args.seed
    )  # mombs
    module = DigitsModule(train, test_set, sampler)
    assessor = mombs.DifficultyAssessor(module.net, train, at="features", sampler=sampler)  # mombs

    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        callbacks=[MoMBSCallback(assessor)],  # mombs
        use_distributed_sampler=False,  # mombs: needed with several devices
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module)

    result = {"accuracy": float(trainer.callback_metrics["test_top1"]), "balance": module.balance}
    if assessor.tracker.measured().all():
        q = assessor.quadrants()
        poor, flips = q.mask("poorly-labeled"), flipped.numpy()
        result.update(
            precision=float(flips[poor].mean()), recall=float(poor[flips].mean()), base_rate=float(flips.mean())
        )
        print("quadrant counts:", q.counts)
        print(
            f"flipped labels found in 'poorly-labeled': precision {result['precision']:.2f}, "
            f"recall {result['recall']:.2f} (base rate {result['base_rate']:.2f})"
        )
    return result


if __name__ == "__main__":
    main()
