"""MoMBS under the Hugging Face Trainer: a tiny random BERT on synthetic token sequences with flipped labels.

Offline and on the CPU in a few seconds: the model is built from a config with
random weights and the data are drawn here, so nothing is downloaded.

    python examples/hf_trainer.py
    python examples/hf_trainer.py --order random     # the baseline

A sequence's class decides which half of the vocabulary most of its tokens
come from; ``--noise`` of the training labels are flipped. The mombs lines are
marked with ``# mombs``.
"""

import argparse
import tempfile

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PrinterCallback,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

import mombs
from mombs.integrations.transformers import MoMBSTrainer

VOCAB, LENGTH, PAD = 64, 16, 0


class TokenSequences(Dataset):
    """Two classes of padded token sequences; items are dicts, as a tokenized Hugging Face data set's are.

    Class ``c`` draws each token from its own half of the vocabulary with
    probability ``bias``. ``flipped`` marks the training labels that ``noise``
    flipped; the Trainer drops that field before the model sees it
    (``remove_unused_columns``).
    """

    def __init__(self, n: int, *, noise: float, seed: int, bias: float = 0.7):
        g = np.random.default_rng(seed)
        self.clean = g.integers(0, 2, n)
        half = (VOCAB - 4) // 2
        own = g.random((n, LENGTH)) < bias
        side = np.where(own, self.clean[:, None], 1 - self.clean[:, None])
        self.tokens = 4 + side * half + g.integers(0, half, (n, LENGTH))
        self.lengths = g.integers(LENGTH // 2, LENGTH + 1, n)
        self.flipped = g.random(n) < noise
        self.labels = np.where(self.flipped, 1 - self.clean, self.clean)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        mask = np.arange(LENGTH) < self.lengths[i]
        return {
            "input_ids": torch.tensor(np.where(mask, self.tokens[i], PAD)),
            "attention_mask": torch.tensor(mask.astype(np.int64)),
            "labels": int(self.labels[i]),
            "flipped": bool(self.flipped[i]),
        }


class PrintEpochs(TrainerCallback):
    """One line per epoch: its test accuracy and whether its batches were planned from scores."""

    def __init__(self, sampler):
        self.sampler = sampler

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        print(
            f"epoch {round(state.epoch) - 1:3d}  eval top-1 {metrics['eval_accuracy']:.3f}  "
            f"planned={self.sampler.uses_scores()}"
        )


def accuracy(pred):
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pivot-epoch", type=int, default=2)
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--order", default="mixed", choices=mombs.ORDERS)
    p.add_argument("--k", type=int, default=8, help="disturbed passes per sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default=None, help="checkpoints and logs; default a temporary folder")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads; one is fastest for a model this small")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    set_seed(args.seed)  # the script's own choice, before the model's random weights; mombs never seeds globally
    train_set = TokenSequences(args.train_size, noise=args.noise, seed=args.seed)
    eval_set = TokenSequences(256, noise=0.0, seed=args.seed + 1)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=LENGTH,
            num_labels=2,
        )
    )

    with tempfile.TemporaryDirectory() as tmp:
        training_args = TrainingArguments(
            output_dir=args.output_dir or tmp,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=256,
            num_train_epochs=args.epochs,
            learning_rate=5e-3,
            optim="adamw_torch",
            eval_strategy="epoch",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            seed=args.seed,
        )
        # The sampler comes after TrainingArguments, which start torch.distributed under torchrun.
        sampler = mombs.MixedOrderBatchSampler(
            train_set, args.batch_size, order=args.order, pivot_epoch=args.pivot_epoch, seed=args.seed
        )  # mombs
        trainer = MoMBSTrainer(
            model=model,
            args=training_args,
            train_dataset=train_set,
            eval_dataset=eval_set,
            compute_metrics=accuracy,
            callbacks=[PrintEpochs(sampler)],
            sampler=sampler,
            at="bert.pooler",  # mombs
            assessor_options={"k": args.k},
        )  # mombs
        trainer.remove_callback(PrinterCallback)  # PrintEpochs says what matters here
        trainer.train()

    result = {"accuracy": [log["eval_accuracy"] for log in trainer.state.log_history if "eval_accuracy" in log][-1]}
    if trainer.assessor.tracker.measured().all():
        q = trainer.assessor.quadrants()  # mombs
        poor = q.mask("poorly-labeled")
        flipped = train_set.flipped
        result["precision"] = float(flipped[poor].mean()) if poor.any() else float("nan")
        result["recall"] = float(poor[flipped].mean()) if flipped.any() else float("nan")
        print("quadrant counts:", q.counts)
        print(
            f"flipped labels found in 'poorly-labeled': precision {result['precision']:.2f}, "
            f"recall {result['recall']:.2f} (base rate {flipped.mean():.2f})"
        )
    return result


if __name__ == "__main__":
    main()
