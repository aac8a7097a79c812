"""Reading and rewriting the train loaders' state in a Lightning checkpoint.

Lightning saves a torchdata ``StatefulDataLoader``'s state in its checkpoint,
and torchdata's state holds a copy of the batch sampler's state and of its
iterator's position, which the loader restores itself, after the callbacks.
:class:`~mombs.integrations.lightning.MoMBSCallback` finds those copies and,
when the checkpoint was written at an epoch's end, overwrites them with the
state it restores. Nothing here imports Lightning or torchdata: the states are
plain nested dicts and lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

__all__ = ["ITER_KEY", "SAMPLER_KEY", "flat_loaders", "overwrite", "sampler_holders"]


def flat_loaders(obj) -> list:
    """The data loaders in ``trainer.train_dataloader``: one, or a list/tuple/dict of them."""
    if isinstance(obj, Mapping):
        return [dl for v in obj.values() for dl in flat_loaders(v)]
    if isinstance(obj, (list, tuple)):
        return [dl for v in obj for dl in flat_loaders(v)]
    return [] if obj is None else [obj]


SAMPLER_KEY, ITER_KEY = "_index_sampler_state", "_sampler_iter_state"  # torchdata's keys


def sampler_holders(obj) -> list[dict]:
    """The dicts inside a torchdata ``StatefulDataLoader`` state that hold a
    mombs batch sampler's state (and its iterator's), at any depth."""
    found: list[dict] = []
    if isinstance(obj, Mapping):
        if isinstance(obj.get(SAMPLER_KEY), dict) and "batches_done" in obj[SAMPLER_KEY]:
            found.append(cast(dict, obj))  # rewritten in place by overwrite: torchdata's states are dicts
        for value in obj.values():
            found.extend(sampler_holders(value))
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            found.extend(sampler_holders(value))
    return found


def overwrite(holders: list[dict], sampler_state: dict) -> None:
    """Puts ``sampler_state`` in the loader states' copies, with the iterator at its start."""
    for holder in holders:
        holder[SAMPLER_KEY] = dict(sampler_state)
        if isinstance(holder.get(ITER_KEY), dict) and "position" in holder[ITER_KEY]:
            holder[ITER_KEY] = {**holder[ITER_KEY], "position": int(sampler_state["batches_done"])}
