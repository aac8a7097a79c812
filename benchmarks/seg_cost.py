"""What MoMBS' assessment pass costs for a 2-D U-Net, against a training epoch.

On the synthetic CT set (:func:`mombs.recipes.segmentation.synthetic_ct.make_synthetic_ct`,
64 x 64, lung window, two classes), for MONAI's ``unet`` and ``basic_unet``
at the factory defaults (:func:`mombs.recipes.segmentation.models.create_segmentation_model`),
times three jobs over the whole training set:

- ``train``: one training epoch, SGD, batch ``--batch-size``, the batch mean of
  :func:`mombs.tasks.segmentation.per_image_dice_ce` as the loss;
- ``pass_full``: one :func:`mombs.assessment_pass` (task ``"segmentation"``,
  disturbed at ``SEG_FEATURE_MODULE[model]``, ``K = --k``) measuring every
  loss and every uncertainty;
- ``pass_unc``: the same pass, uncertainties only (``loss_indices=[]``), which
  is what refreshing the uncertainties costs (the losses come from training).

A U-Net's skip connections cannot carry tiled copies of the disturbed
bottleneck, so the uncertainty runs the whole network K times (the fallback
of :func:`mombs.feature_noise_uncertainty`). Each record says so: it checks that
``tiled=True`` raises and that the fallback cache names the module.

The jobs of both models alternate within each repeat, in reversed order on
odd repeats, so that drift in the machine's speed hits all alike; seconds are
medians over ``--repeats``. Warm-up (one training batch, one small pass, which
also fills the fallback cache) is left out. Training batches are moved to
``--device`` batch by batch, as a loader's are; on a GPU every job is timed
between two ``torch.cuda.synchronize()`` calls.

Peak memory is measured in a fresh subprocess per (model, job): the growth of
the process's peak resident set (``VmHWM``, what ``ru_maxrss`` reports) over the job, after the data,
the model and a one-image warm-up are in place and the kernel's high-water
mark has been reset to the current resident set. glibc's mmap threshold is
fixed at 64 KiB there, so freed tensors leave the resident set rather than
stay in the heap. It is resident memory as the OS sees it (torch's tensors,
oneDNN scratch, the allocator's slack), not a count of torch allocations.
On a GPU it is the growth of torch's peak allocated CUDA memory over one more
run of each job (``torch.cuda.reset_peak_memory_stats``), in this process.

    python benchmarks/seg_cost.py --out benchmarks/results/seg_cost_cpu.json
    python benchmarks/seg_cost.py --device cuda --size 256 --out seg_cost_gpu.json
    python benchmarks/seg_cost.py --n-train 32 --repeats 1 --out /tmp/seg_cost.json   # smoke test

One JSON object is printed per model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

import mombs
from _cost import (  # benchmarks/_cost.py: a script's folder is on sys.path
    CUDA_MEMORY_METHOD,
    cuda_memory,
    status_kb,
    sync,
)
from mombs.envinfo import environment_info
from mombs.recipes.segmentation.models import SEG_FEATURE_MODULE, SEG_MODELS, create_segmentation_model
from mombs.recipes.segmentation.synthetic_ct import make_synthetic_ct
from mombs.tasks.segmentation import per_image_dice_ce

JOBS = ("train", "pass_full", "pass_unc")


class Bench:
    """One model, its data and optimiser, and the three jobs as methods."""

    def __init__(self, args, name: str):
        self.args, self.name, self.at = args, name, SEG_FEATURE_MODULE[name]
        self.device = torch.device(args.device)
        train = make_synthetic_ct(n_train=args.n_train, n_val=0, n_test=0, size=args.size, seed=args.seed).train
        self.x, self.y = torch.from_numpy(train.images), torch.from_numpy(train.masks)
        self.data = mombs.IndexedDataset(train.dataset())
        torch.manual_seed(args.seed)  # the same initial weights every run (a script may seed)
        self.model = create_segmentation_model(name, in_channels=self.x.shape[1], num_classes=2).to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=args.lr, momentum=0.9)
        self.gen = torch.Generator().manual_seed(args.seed)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(args.seed)  # where the features are

    def _step(self, idx) -> None:
        x, y = self.x[idx].to(self.device), self.y[idx].to(self.device)
        loss = per_image_dice_ce(self.model(x), y).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def train(self) -> None:
        self.model.train()
        for idx in torch.randperm(len(self.y), generator=self.gen).split(self.args.batch_size):
            self._step(idx)

    def _pass(self, data, loss_indices=None):
        return mombs.assessment_pass(
            self.model,
            data,
            task="segmentation",
            at=self.at,
            k=self.args.k,
            batch_size=self.args.pass_batch_size,
            loss_indices=loss_indices,
            generator=self.noise_gen,
        )

    def pass_full(self) -> None:
        self._pass(self.data)

    def pass_unc(self) -> None:
        self._pass(self.data, loss_indices=[])

    def warm_up(self, n: int) -> None:
        """Untimed: ``n`` images through a training step and a small pass (fills the fallback cache)."""
        self.model.train()
        self._step(torch.arange(n))
        self._pass(torch.utils.data.Subset(self.data, range(n)))

    def fallback(self) -> dict:
        """Whether the K-pass takes the run-K-times fallback for this model."""
        try:
            mombs.feature_noise_uncertainty(self.model, self.x[:2].to(self.device), at=self.at, k=2, tiled=True)
            tiled_error = None
        except RuntimeError as err:
            tiled_error = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        from mombs.noise import _UNTILEABLE  # read only, to report what the pass did

        return {
            "tiled_true_raises": tiled_error is not None,
            "tiled_true_error": tiled_error,
            "fallback_cache_has_module": self.at in _UNTILEABLE.get(self.model, ()),
            "uncertainty_runs": "whole network K times" if tiled_error else "tiled copies",
        }

    def sync(self) -> None:
        sync(self.device)

    def cuda_memory(self, job: str) -> dict:
        return cuda_memory(self.device, getattr(self, job))


def measure_memory(args) -> dict:
    """In this (fresh) process: growth of the peak resident set over one job, MB.

    After the warm-up the kernel's high-water mark is reset to the current
    resident set (``/proc/self/clear_refs``), so that the warm-up's and the
    imports' peaks do not hide the job's; the job's peak is then the mark
    (``VmHWM``) minus the resident set before it. ``ru_maxrss`` is not read: it
    also keeps the marks that exited threads left in the process's signal
    struct, which the reset does not clear.
    """
    bench = Bench(args, args.memory_model)
    bench.warm_up(1)  # one image: library initialisation, not the job's batch-sized buffers
    before = status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark to the current resident set (Linux >= 4.0)
    getattr(bench, args.memory_job)()
    after = status_kb("VmHWM")
    return {
        "rss_before_mb": round(before / 1024, 1),
        "peak_rss_mb": round(after / 1024, 1),
        "delta_mb": round((after - before) / 1024, 1),
    }


def _memory_subprocess(argv: list, model: str, job: str) -> dict:
    cmd = [sys.executable, __file__, *argv, "--memory-model", model, "--memory-job", job]
    # A fixed mmap threshold: glibc then maps every buffer of 64 KiB or more on
    # its own and unmaps it when freed, so the resident set follows the live
    # tensors instead of a heap that keeps freed memory (its default threshold
    # grows up to 32 MiB as buffers are freed).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(SEG_MODELS), choices=list(SEG_MODELS))
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--n-train", type=int, default=300, help="training slices")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--batch-size", type=int, default=8, help="training batch size")
    p.add_argument("--pass-batch-size", type=int, default=32, help="assessment pass batch size")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (on this busy 2-core machine 2 threads made tiny U-Nets ~100x slower)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/seg_cost_cpu.json")
    p.add_argument("--memory-model", help=argparse.SUPPRESS)
    p.add_argument("--memory-job", choices=JOBS, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_model:
        print(json.dumps(measure_memory(args)))
        return 0

    benches = {name: Bench(args, name) for name in args.models}
    for b in benches.values():
        b.warm_up(min(args.batch_size, args.n_train))
    order = [(name, job) for name in benches for job in JOBS]
    seconds = {key: [] for key in order}
    for r in range(args.repeats):
        for name, job in order if r % 2 == 0 else order[::-1]:
            benches[name].sync()
            t0 = time.perf_counter()
            getattr(benches[name], job)()
            benches[name].sync()
            seconds[(name, job)].append(time.perf_counter() - t0)

    child_argv = [a for a in argv if a not in ("--no-memory",)]
    env = environment_info(args.device)
    cuda = torch.device(args.device).type == "cuda"
    records = []
    for name, bench in benches.items():
        sec = {job: statistics.median(seconds[(name, job)]) for job in JOBS}
        rec = {
            "model": name,
            "at": bench.at,
            **bench.fallback(),
            "seconds": {job: round(s, 3) for job, s in sec.items()},
            "seconds_per_repeat": {job: [round(s, 3) for s in seconds[(name, job)]] for job in JOBS},
            "ratio_pass_full_over_train": round(sec["pass_full"] / sec["train"], 3),
            "ratio_pass_unc_over_train": round(sec["pass_unc"] / sec["train"], 3),
            # Refreshing every uncertainty every epoch after the pivot: the
            # losses come from the training forward, so the pass is uncertainty-only.
            "full_refresh_overhead_floor": round(1 + sec["pass_unc"] / sec["train"], 3),
            "refreshable_fraction_at_1.10": round(0.10 * sec["train"] / sec["pass_unc"], 3),
            "params": sum(p.numel() for p in bench.model.parameters()),
            "n_train": args.n_train,
            "size": args.size,
            "batch_size": args.batch_size,
            "pass_batch_size": args.pass_batch_size,
            "k": args.k,
            "threads": args.threads,
            "repeats": args.repeats,
            "device": args.device,
        }
        if not args.no_memory:
            mem = {job: (bench.cuda_memory(job) if cuda else _memory_subprocess(child_argv, name, job)) for job in JOBS}
            rec["peak_memory_mb"] = {job: m["delta_mb"] for job, m in mem.items()}
            rec["peak_memory_detail"] = mem
            if mem["train"]["delta_mb"] > 0:
                rec["ratio_memory_pass_full_over_train"] = round(
                    mem["pass_full"]["delta_mb"] / mem["train"]["delta_mb"], 3
                )
        records.append(rec)
        print(json.dumps(rec), flush=True)
    result = {
        "benchmark": "seg_cost",
        "records": records,
        "args": vars(args),
        "environment": env,
        "timing": "median seconds over repeats; the 6 (model, job) runs alternate within a repeat, "
        "reversed on odd repeats; warm-up excluded",
        "memory_method": CUDA_MEMORY_METHOD
        if cuda
        else "peak resident set growth over the job (MB): in a fresh subprocess per "
        "(model, job), after data, model and a one-image warm-up, the kernel's "
        "high-water mark is reset to the current RSS (/proc/self/clear_refs 5); "
        "delta = VmHWM after the job - VmRSS before it; glibc "
        "MALLOC_MMAP_THRESHOLD_=65536 so freed tensors leave the RSS; "
        "RSS, not torch-only allocations",
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
