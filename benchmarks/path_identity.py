"""Is the one training path the old runner, bit for bit? One config, both runners, one machine.

    python benchmarks/path_identity.py --old-commit cf34335 --strategy random \
        --old-dir /tmp/oldpath/random --new-dir runs/study/fmnist_nl_onepath/runs/<run> \
        --out benchmarks/results/path_identity_cpu.json

The old runner (``mombs/train.py`` before the one-path change) indexed the
training tensors itself and planned with ``Strategy.batches``; the new one
trains through a ``DataLoader`` with the strategy's batch sampler. The old
commit is checked out into a temporary git worktree and run in a subprocess
with the same Python; the new runner runs here. Finished run folders are
reused (a run with ``results.json`` is never redone), so the check can read
runs made earlier on the same machine. Float kernels differ between CPUs, so
only runs made on one machine can be compared. ``inputs`` checks, batch by
batch, whether any difference comes from the data the two paths feed the model
or from the float kernels that process it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mombs.envinfo import environment_info  # noqa: E402
from mombs.train import RunConfig, run  # noqa: E402

#: The Fashion-MNIST-NL core recipe (configs/study/fmnist_nl.yaml) at batch size 32.
RECIPE = dict(
    dataset="fashion-mnist",
    subset=10000,
    noise="symmetric",
    noise_rate=0.4,
    model="small_cnn",
    epochs=12,
    pivot_epoch=4,
    schedule="reuse-loss",
    lr=0.02,
    test_every=4,
    batch_size=32,
    threads=1,
)

_OLD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import mombs
assert mombs.__file__.startswith(sys.argv[1]), mombs.__file__
from mombs.train import RunConfig, run
cfg = RunConfig(**json.loads(sys.argv[2]))
print(json.dumps(run(cfg, sys.argv[3])))
"""


def _old_run(commit: str, cfg: dict, out_dir: str) -> dict:
    done = Path(out_dir, "results.json")
    if done.exists():
        return json.loads(done.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "tree")
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", tree, commit], check=True, capture_output=True
        )
        try:
            out = subprocess.run(
                [sys.executable, "-c", _OLD, tree, json.dumps(cfg), out_dir], check=True, capture_output=True, text=True
            ).stdout
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tree], capture_output=True)
    return json.loads(out.strip().splitlines()[-1])


def input_check(cfg: dict, batches: int = 3) -> dict:
    """Are the new path's batches, inputs and first forwards those of the old indexing?

    The old runner took ``x_train[batch]`` from the tensors; the new one gets the
    ``DataLoader``'s collated batch. Compares the first epoch's batch indices,
    the first ``batches`` inputs and labels bit for bit, and the model's logits on
    both, as they come and with the collated batch given the old one's strides.
    """
    import numpy as np
    import torch

    from mombs.planner import plan_batches
    from mombs.recipes import get_recipe
    from mombs.recipes.classification.corpus import load_corpus
    from mombs.train.build import build

    rc = RunConfig(**cfg).validate()
    data = load_corpus(rc)
    c = build(rc, get_recipe(rc.task), data, torch.device("cpu"))
    c.sampler.set_epoch(0)
    old = plan_batches(np.zeros(len(data.y_train)), rc.batch_size, order="random", seed=rc.seed, epoch=0).tolist()
    x, y = data.x_train, torch.from_numpy(data.y_train)
    out = {
        "batch_indices_equal": list(c.sampler) == old,
        "inputs_equal": True,
        "labels_equal": True,
        "logits_equal": True,
        "logits_equal_with_old_strides": True,
    }
    c.model.eval()
    with torch.no_grad():
        for i, (_idx, xb, yb) in zip(range(batches), c.loader):
            xo, yo = x[torch.as_tensor(old[i])], y[torch.as_tensor(old[i])]
            out["inputs_equal"] &= bool(torch.equal(xb, xo))
            out["labels_equal"] &= bool(torch.equal(yb, yo))
            out["logits_equal"] &= bool(torch.equal(c.model(xb), c.model(xo)))
            out["logits_equal_with_old_strides"] &= bool(
                torch.equal(c.model(xb.as_strided(xo.shape, xo.stride())), c.model(xo))
            )
            out["strides"] = {"collated": list(xb.stride()), "indexed": list(xo.stride())}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-commit", required=True)
    p.add_argument("--strategy", default="random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--old-dir", required=True)
    p.add_argument("--new-dir", required=True)
    p.add_argument("--out")
    args = p.parse_args(argv)
    cfg = dict(RECIPE, strategy=args.strategy, seed=args.seed)
    new = run(RunConfig(**cfg), args.new_dir)
    old = _old_run(args.old_commit, cfg, args.old_dir)
    curves = ("train_loss", "val_top1", "test_top1", "train_fit")
    same = {c: old["curves"][c] == new["curves"][c] for c in curves}
    report = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "config": cfg,
        "key": RunConfig(**cfg).key(),
        "old": {"commit": args.old_commit, "top1": old["top1"], "environment": old["environment"]},
        "new": {"top1": new["top1"], "environment": new["environment"]},
        "identical_curves": same,
        "identical": all(same.values()) and old["top1"] == new["top1"],
        "first_epoch_train_loss": {"old": old["curves"]["train_loss"][0], "new": new["curves"]["train_loss"][0]},
        "inputs": input_check(cfg),
        "environment": environment_info("cpu"),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
