"""MoMBS under torch.distributed: every rank plans the same balanced epoch from the same scores.

    torchrun --nproc_per_node 2 examples/ddp_loop.py            # gloo on the CPU
    torchrun --nproc_per_node 4 examples/ddp_loop.py --backend nccl

Each rank measures the samples it trains on; ``assessor.end_epoch()`` all-reduces
the measurements, so all ranks hand identical scores to their samplers, which then
agree on the plan without further communication.
"""

import argparse
import gc
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(__file__))
from plain_loop import SmallCNN, digits_with_noise  # noqa: E402

import mombs  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=16, help="per rank")
    p.add_argument("--pivot-epoch", type=int, default=2)
    p.add_argument("--backend", default="gloo")
    args = p.parse_args(argv)

    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if args.backend == "nccl" else torch.device("cpu")
    )
    torch.manual_seed(0)  # the same initial weights on every rank (the script's choice)
    train_set, test_set, _ = digits_with_noise(0.3, seed=0)
    model = SmallCNN().to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)

    train = mombs.IndexedDataset(train_set)
    sampler = mombs.MixedOrderBatchSampler(train, args.batch_size, pivot_epoch=args.pivot_epoch)  # world from dist
    # The assessor measures through the plain module, outside DDP's gradient hooks.
    assessor = mombs.DifficultyAssessor(model, train, at="features", sampler=sampler, device=device)
    loader = DataLoader(train, batch_sampler=sampler)

    for epoch in range(args.epochs):
        assessor.start_epoch(epoch)
        ddp.train()
        for idx, x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(ddp(x), y, reduction="none")
            assessor.observe(idx, loss)
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
        assessor.end_epoch()
        if rank == 0:
            model.eval()
            with torch.no_grad():
                xs, ys = test_set.tensors
                acc = (model(xs.to(device)).argmax(1).cpu() == ys).float().mean().item()
            print(
                f"epoch {epoch}  world {world}  steps/rank {len(sampler)}  planned={sampler.uses_scores()}  "
                f"test top-1 {acc:.3f}",
                flush=True,
            )
    # Release DDP before its process group: a DDP reducer that outlives the group
    # can abort the process at exit ("terminate called without an active exception").
    del ddp, opt, model, assessor, loader, sampler
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
