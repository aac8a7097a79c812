"""What MoMBS' assessment pass costs for a Faster R-CNN, against a training epoch.

On the synthetic detection set (:func:`mombs.recipes.detection.synthetic_det.make_synthetic_det`,
``--size`` pixels square, three windows), for a Faster R-CNN of
:func:`mombs.recipes.detection.models.create_detection_model` (``--model``: the
``tiny`` one by default, ``fasterrcnn_resnet50_fpn`` for the paper's
detector), times four jobs over the whole training set:

- ``train``: one training epoch, SGD, batch ``--batch-size`` (the paper's 4),
  the sum of torchvision's four losses from
  :func:`mombs.tasks.detection.detection_losses` (which also yields the
  per-image RPN loss a ``loss_source="train"`` schedule reuses);
- ``pass_full``: one :func:`mombs.assessment_pass` (task ``"detection"``,
  whose passes run the detector through ``rpn_forward``, disturbed at
  ``DET_FEATURE_MODULE[--model]``, ``K = --k``) measuring every per-image
  RPN loss and every uncertainty;
- ``pass_unc``: the same pass, uncertainties only (``loss_indices=[]``): what
  refreshing the uncertainties costs when the losses come from training;
- ``pass_unc_tiled``: ``pass_unc`` with ``chunk_rows = K * --pass-batch-size``,
  so that the K disturbed copies of a batch go through the network after the
  first backbone block in one forward (a list of images is otherwise sent
  whole K times, transform and stem included).

The pass runs the RPN only (transform, backbone, RPN head, anchors): no
proposals, no RoI heads. The jobs alternate within each repeat, in reversed
order on odd repeats; seconds are medians over ``--repeats``. Warm-up (one
training batch, one small pass) is left out. Images and targets are moved to
``--device`` batch by batch, as a loader's batches are; on a GPU every job is
timed between two ``torch.cuda.synchronize()`` calls.

Peak memory on the CPU is measured as in ``benchmarks/seg_cost.py``: in a fresh
subprocess per job, the growth of the peak resident set (``VmHWM``) over the
job after the data, the model and a one-image warm-up are in place and the
kernel's high-water mark has been reset to the current resident set, with
glibc's mmap threshold fixed at 64 KiB so freed tensors leave the resident set.
On a GPU it is the growth of torch's peak allocated CUDA memory over one more
run of each job (``torch.cuda.reset_peak_memory_stats``), in this process.

    python benchmarks/det_cost.py --out benchmarks/results/det_cost_cpu.json
    python benchmarks/det_cost.py --device cuda --model fasterrcnn_resnet50_fpn --size 512 --out det_cost_gpu.json
    python benchmarks/det_cost.py --n-train 16 --repeats 1 --no-memory --out /tmp/det_cost.json   # smoke test
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
from mombs.recipes.detection.models import DET_FEATURE_MODULE, create_detection_model
from mombs.recipes.detection.synthetic_det import make_synthetic_det
from mombs.tasks.detection import detection_losses

JOBS = ("train", "pass_full", "pass_unc", "pass_unc_tiled")


class Bench:
    """The model, its data and optimiser, and the jobs as methods."""

    def __init__(self, args):
        self.args, self.at = args, DET_FEATURE_MODULE[args.model]
        self.device = torch.device(args.device)
        train = make_synthetic_det(n_train=args.n_train, n_val=0, n_test=0, size=args.size, seed=args.seed).train
        self.ds = train.dataset()
        self.items = [self.ds[i] for i in range(len(self.ds))]
        self.data = mombs.IndexedDataset(self.ds)
        self.n_boxes = int(sum(len(b) for b in train.boxes))
        torch.manual_seed(args.seed)  # the same initial weights every run (a script may seed)
        self.model = create_detection_model(args.model, min_size=args.size, max_size=args.size).to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
        self.gen = torch.Generator().manual_seed(args.seed)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(args.seed)  # where the features are
        self.step_seed = 0

    def _step(self, idx) -> None:
        images = mombs.to_device([self.items[i][0] for i in idx], self.device)
        targets = mombs.to_device([self.items[i][1] for i in idx], self.device)
        self.step_seed += 1
        losses, per_image = detection_losses(self.model, images, targets, seed=self.step_seed)
        loss = sum(losses.values())
        self.last_loss = loss.detach()  # kept on the device: read once, at the end, not per step
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        per_image.detach()  # what a loop hands to assessor.observe()

    def train(self) -> None:
        self.model.train()
        for idx in torch.randperm(len(self.items), generator=self.gen).split(self.args.batch_size):
            self._step(idx.tolist())

    def _pass(self, data, loss_indices=None, chunk_rows=None):
        return mombs.assessment_pass(
            self.model,
            data,
            task="detection",
            at=self.at,
            k=self.args.k,
            batch_size=self.args.pass_batch_size,
            loss_indices=loss_indices,
            generator=self.noise_gen,
            chunk_rows=chunk_rows,
        )

    def pass_full(self) -> None:
        self._pass(self.data)

    def pass_unc(self) -> None:
        self._pass(self.data, loss_indices=[])

    def pass_unc_tiled(self) -> None:
        self._pass(self.data, loss_indices=[], chunk_rows=self.args.k * self.args.pass_batch_size)

    def warm_up(self, n: int) -> None:
        """Untimed: ``n`` images through a training step and small passes."""
        self.model.train()
        self._step(list(range(n)))
        sub = torch.utils.data.Subset(self.data, range(n))
        self._pass(sub)
        self._pass(sub, loss_indices=[], chunk_rows=self.args.k * n)

    def sync(self) -> None:
        sync(self.device)

    def cuda_memory(self, job: str) -> dict:
        return cuda_memory(self.device, getattr(self, job))


def measure_memory(args) -> dict:
    """In this (fresh) process: growth of the peak resident set over one job, MB (see seg_cost.py)."""
    bench = Bench(args)
    bench.warm_up(1)
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


def _memory_subprocess(argv: list, job: str) -> dict:
    cmd = [sys.executable, __file__, *argv, "--memory-job", job]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", choices=list(DET_FEATURE_MODULE), help="detector")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--n-train", type=int, default=200, help="training slices")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (also the model's min/max size)")
    p.add_argument("--batch-size", type=int, default=4, help="training batch size (paper: 4)")
    p.add_argument("--pass-batch-size", type=int, default=16, help="assessment pass batch size")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (2 shared cores: 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/det_cost_cpu.json")
    p.add_argument("--memory-job", choices=JOBS, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_job:
        print(json.dumps(measure_memory(args)))
        return 0

    bench = Bench(args)
    bench.warm_up(min(args.batch_size, args.n_train))
    seconds = {job: [] for job in JOBS}
    for r in range(args.repeats):
        for job in JOBS if r % 2 == 0 else JOBS[::-1]:
            bench.sync()
            t0 = time.perf_counter()
            getattr(bench, job)()
            bench.sync()
            seconds[job].append(time.perf_counter() - t0)

    sec = {job: statistics.median(v) for job, v in seconds.items()}
    # A diverged run (NaN losses) would time other work than a training one: say whether it did.
    last = float(bench.last_loss)
    rec = {
        "train_loss_last": last,
        "train_loss_finite": bool(last == last and abs(last) != float("inf")),
        "model": args.model,
        "at": bench.at,
        "params": sum(p.numel() for p in bench.model.parameters()),
        "seconds": {job: round(s, 3) for job, s in sec.items()},
        "seconds_per_repeat": {job: [round(s, 3) for s in v] for job, v in seconds.items()},
        "ratio_pass_full_over_train": round(sec["pass_full"] / sec["train"], 3),
        "ratio_pass_unc_over_train": round(sec["pass_unc"] / sec["train"], 3),
        "ratio_pass_unc_tiled_over_train": round(sec["pass_unc_tiled"] / sec["train"], 3),
        # Every uncertainty refreshed every epoch after the pivot, losses from training:
        "full_refresh_overhead_floor": round(1 + min(sec["pass_unc"], sec["pass_unc_tiled"]) / sec["train"], 3),
        "n_train": args.n_train,
        "n_boxes": bench.n_boxes,
        "size": args.size,
        "batch_size": args.batch_size,
        "pass_batch_size": args.pass_batch_size,
        "k": args.k,
        "threads": args.threads,
        "repeats": args.repeats,
        "device": args.device,
    }
    cuda = bench.device.type == "cuda"
    if cuda and not args.no_memory:
        mem = {job: bench.cuda_memory(job) for job in JOBS}
        rec["peak_memory_mb"] = {job: m["delta_mb"] for job, m in mem.items()}
        rec["peak_memory_detail"] = mem
        if mem["train"]["delta_mb"] > 0:
            rec["ratio_memory_pass_full_over_train"] = round(mem["pass_full"]["delta_mb"] / mem["train"]["delta_mb"], 3)
    elif not args.no_memory:
        child_argv = [a for a in argv if a != "--no-memory"]
        mem = {job: _memory_subprocess(child_argv, job) for job in JOBS}
        rec["peak_memory_mb"] = {job: m["delta_mb"] for job, m in mem.items()}
        rec["peak_memory_detail"] = mem
        if mem["train"]["delta_mb"] > 0:
            rec["ratio_memory_pass_full_over_train"] = round(mem["pass_full"]["delta_mb"] / mem["train"]["delta_mb"], 3)
    print(json.dumps(rec), flush=True)
    result = {
        "benchmark": "det_cost",
        "records": [rec],
        "args": vars(args),
        "environment": environment_info(args.device),
        "timing": "median seconds over repeats; the 4 jobs alternate within a repeat, reversed on odd "
        "repeats; warm-up excluded",
        "memory_method": CUDA_MEMORY_METHOD
        if cuda
        else "peak resident set growth over the job (MB): in a fresh subprocess per job, "
        "after data, model and a one-image warm-up, the kernel's high-water mark is "
        "reset to the current RSS (/proc/self/clear_refs 5); delta = VmHWM after the "
        "job - VmRSS before it; glibc MALLOC_MMAP_THRESHOLD_=65536; RSS, not "
        "torch-only allocations",
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
