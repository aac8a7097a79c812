"""MoMBS in PyTorch Lightning: a ``Callback`` that drives a :class:`~mombs.DifficultyAssessor`.

.. code-block:: python

    train = mombs.IndexedDataset(train_set)                 # items become (index, x, y)
    sampler = mombs.MixedOrderBatchSampler(train, 16, pivot_epoch=5)
    assessor = mombs.DifficultyAssessor(model.net, train, at="features", sampler=sampler)

    class Model(L.LightningModule):
        def training_step(self, batch, batch_idx):
            idx, x, y = batch
            loss = F.cross_entropy(self.net(x), y, reduction="none")
            return {"loss": loss.mean(), "sample_loss": loss, "indices": idx}

        def train_dataloader(self):
            return DataLoader(train, batch_sampler=sampler)  # batch_sampler=, not sampler=

    trainer = L.Trainer(callbacks=[MoMBSCallback(assessor)], use_distributed_sampler=False)

Lightning calls ``set_epoch`` only on ``dataloader.sampler`` and on
``dataloader.batch_sampler.sampler``, never on a custom batch sampler, so a
:class:`~mombs.MixedOrderBatchSampler` given as ``batch_sampler`` would stay at
epoch 0 on its own: the same batches every epoch, never planned. The callback
makes the assessor's three calls at the right hooks (``start_epoch`` at each
train-epoch start, which sets the sampler's epoch; ``observe`` after each
training step; ``end_epoch`` at each train-epoch end), saves the assessor and
the sampler in Lightning checkpoints, and refuses the configurations under which
Lightning would silently replace or bypass the sampler.

Nothing in Lightning is patched. Importing this module imports Lightning.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from typing import cast

import numpy as np
import torch

try:
    import lightning.pytorch as pl
except ImportError as err:  # the extra is optional; say which one to install
    raise ImportError(
        "mombs.integrations.lightning needs PyTorch Lightning (lightning >= 2.2): pip install 'mombs[lightning]'"
    ) from err

from ..assessor import DifficultyAssessor
from ..planner import replica_layout
from ..sampler import MixedOrderBatchSampler
from ._loader_state import SAMPLER_KEY, flat_loaders, overwrite, sampler_holders

__all__ = ["MoMBSCallback"]

_STATE_VERSION = 1


def _check_key(name: str, value) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}={value!r} must be a non-empty string, the key of the training_step output")


class MoMBSCallback(pl.Callback):
    """Drives a :class:`~mombs.DifficultyAssessor` and its sampler from Lightning's hooks.

    The ``training_step`` convention: return a dict with Lightning's ``"loss"``
    (the scalar to optimise) and, beside it, the step's per-sample losses and
    the batch's data set indices::

        def training_step(self, batch, batch_idx):
            idx, x, y = batch                                   # from mombs.IndexedDataset
            loss = F.cross_entropy(self.net(x), y, reduction="none")   # (B,)
            return {"loss": loss.mean(), "sample_loss": loss, "indices": idx}

    The callback reads the two entries in ``on_train_batch_end`` and hands them
    to :meth:`DifficultyAssessor.observe` (which detaches the losses; returning
    ``loss.detach()`` there frees the graph a little earlier). A step whose
    ``training_step`` returned ``None`` (Lightning skips it) is skipped here too.
    With the ``train-features`` schedule the captured features go through
    ``head`` after that step's optimizer update, not before it as in a plain
    loop.

    The sampler must be the train dataloader's ``batch_sampler``
    (``DataLoader(dataset, batch_sampler=assessor.sampler)``) and, with more than
    one process, ``Trainer(use_distributed_sampler=False)`` is required: Lightning
    would otherwise rebuild the batch sampler around a ``DistributedSampler`` as
    ``type(sampler)(sampler, batch_size=..., drop_last=...)``, which is no longer
    the sampler the assessor feeds. The sampler shards the epoch itself; under
    DDP it must know the world size and its rank, which exist only once Lightning
    has started the process group, inside ``fit``. Pass a function that builds
    the assessor (it is called in :meth:`setup`, after the process group exists)
    and let the ``train_dataloader`` hook read :attr:`sampler`::

        def build(trainer, module):     # runs on every rank, process group ready
            sampler = mombs.MixedOrderBatchSampler(train, 16, pivot_epoch=5)
            return mombs.DifficultyAssessor(module.net, train, at="features", sampler=sampler)

        mombs_cb = MoMBSCallback(build)
        # in the LightningModule: DataLoader(train, batch_sampler=mombs_cb.sampler)

    Checkpoints hold the assessor (tracker values, noise generator, epoch) and
    the sampler, with the number of batches the training loop has consumed of
    the current epoch (not the number a loader with workers drew ahead). A
    resumed ``fit(ckpt_path=...)`` then trains on the batches an uninterrupted
    run would have and measures the same values:

    - from a checkpoint written at an epoch's end (after its last step, after
      validation, or in ``on_train_epoch_end``): with any train dataloader;
    - from one written inside an epoch: with torchdata's ``StatefulDataLoader``
      (workers too), whose state Lightning saves and which restores the
      sampler's position itself, and with a plain ``DataLoader``, whose
      sampler the callback restores (Lightning warns that the loader is not
      resumable; here the sampler is).

    Under DDP the checkpoint (rank 0's) holds the values every rank measured,
    gathered when it is written; ``state_dict`` is then a collective call, which
    Lightning's ``ModelCheckpoint`` and ``trainer.save_checkpoint`` make on every
    rank.

    Args:
        assessor: the :class:`~mombs.DifficultyAssessor` to drive, whose
            ``sampler`` is a :class:`~mombs.MixedOrderBatchSampler`; or a
            function ``(trainer, pl_module) -> DifficultyAssessor`` called once,
            at the start of the first ``fit``.
        loss_key: key of the ``(B,)`` per-sample losses in the ``training_step``
            output (default ``"sample_loss"``).
        indices_key: key of the ``(B,)`` integer data set indices of the batch
            (default ``"indices"``).

    Raises:
        ValueError: a bad argument; or, at ``fit``, a configuration that would
            bypass the sampler (see :meth:`setup` and :meth:`on_train_start`).
    """

    def __init__(
        self, assessor: DifficultyAssessor | Callable, *, loss_key: str = "sample_loss", indices_key: str = "indices"
    ):
        _check_key("loss_key", loss_key)
        _check_key("indices_key", indices_key)
        if loss_key == indices_key:
            raise ValueError(f"loss_key={loss_key!r} and indices_key={indices_key!r} must differ")
        self._assessor: DifficultyAssessor | None
        if isinstance(assessor, DifficultyAssessor):
            self._check_assessor(assessor, "assessor")
            self._assessor, self._build = assessor, None
        elif callable(assessor):
            self._assessor, self._build = None, assessor
        else:
            raise ValueError(
                f"assessor={assessor!r} must be a mombs.DifficultyAssessor or a function "
                f"(trainer, pl_module) -> DifficultyAssessor"
            )
        self.loss_key, self.indices_key = loss_key, indices_key
        self._trainer: pl.Trainer | None = None
        # The last epoch whose end_epoch() ran: Lightning may call on_train_epoch_end
        # again for that epoch when it resumes from a checkpoint written during it,
        # and a second assessment pass would draw other noise than the first did.
        self._ended_epoch = -1
        self._pending_state: dict | None = None
        self._finish_restored = False
        self._loader_copies: list[dict] = []

    # ------------------------------------------------------------------ #
    # what the user reads

    @property
    def assessor(self) -> DifficultyAssessor:
        """The driven assessor (built by then, when a function was given)."""
        if self._assessor is None:
            raise RuntimeError(
                "the assessor is built in setup(), at the start of trainer.fit(); "
                "read callback.assessor from a hook (e.g. train_dataloader) instead"
            )
        return self._assessor

    @property
    def sampler(self) -> MixedOrderBatchSampler:
        """The assessor's sampler: pass it as ``DataLoader(..., batch_sampler=callback.sampler)``."""
        return self.assessor.sampler

    # ------------------------------------------------------------------ #
    # checks

    @staticmethod
    def _check_assessor(assessor, name: str) -> None:
        if not isinstance(assessor, DifficultyAssessor):
            raise ValueError(f"{name} returned {assessor!r}; it must return a mombs.DifficultyAssessor")
        if not isinstance(assessor.sampler, MixedOrderBatchSampler):
            raise ValueError(
                f"{name}.sampler={assessor.sampler!r} must be a mombs.MixedOrderBatchSampler: "
                f"build the assessor with sampler=MixedOrderBatchSampler(...)"
            )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Builds the assessor if a function was given and checks the Trainer.

        Raises:
            ValueError: several processes with ``use_distributed_sampler=True``;
                a sampler whose ``num_replicas``/``rank`` are not the Trainer's
                world size and global rank; an assessor measuring a network that
                is not part of ``pl_module``.
        """
        if stage != "fit":
            return
        self._trainer = trainer
        if self._assessor is None:
            self._assessor = cast(Callable, self._build)(trainer, pl_module)  # given when the assessor was not
            self._check_assessor(self._assessor, "the assessor function")
            if self._pending_state is not None:
                self.load_state_dict(self._pending_state)
        # Lightning keeps this flag only on its accelerator connector; read it defensively.
        connector = getattr(trainer, "_accelerator_connector", None)
        uses_dist_sampler = getattr(connector, "use_distributed_sampler", False)
        if trainer.world_size > 1 and uses_dist_sampler:
            raise ValueError(
                f"Trainer(use_distributed_sampler=True) with world_size={trainer.world_size}: "
                f"Lightning would replace the MixedOrderBatchSampler by a new one around a "
                f"DistributedSampler, which the assessor does not feed. Pass "
                f"Trainer(use_distributed_sampler=False); the sampler shards the epoch itself"
            )
        sampler = self.sampler
        if (sampler.num_replicas, sampler.rank) != (trainer.world_size, trainer.global_rank):
            raise ValueError(
                f"the sampler has num_replicas={sampler.num_replicas}, rank={sampler.rank} but "
                f"this Trainer process has world_size={trainer.world_size}, global_rank="
                f"{trainer.global_rank}. Build it once the process group exists: pass "
                f"MoMBSCallback a function (trainer, pl_module) -> DifficultyAssessor, called in "
                f"setup(), or give MixedOrderBatchSampler num_replicas= and rank="
            )
        model = self.assessor.model
        if not any(m is model for m in pl_module.modules()):
            raise ValueError(
                f"assessor.model ({type(model).__name__}) is not a submodule of the "
                f"LightningModule ({type(pl_module).__name__}): the assessor would measure a "
                f"network that is not being trained. Build it on the module's own network"
            )
        self.assessor.open()  # the train-* schedules' hook, taken off again in teardown()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Takes the assessor's forward hook off the network and forgets what a restore left.

        The ``train-*`` schedules' hook goes on in :meth:`setup` and comes off
        here, at the end of every ``fit`` (a ``validate`` restores too), so the
        user's network carries it only while it trains: never more than one,
        and none after.
        """
        self._finish_restored, self._loader_copies = False, []
        if self._assessor is not None:
            self._assessor.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Takes the hook off when ``fit`` fails: Lightning then skips :meth:`teardown`."""
        if self._assessor is not None:
            self._assessor.close()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Checks that the train dataloader draws its batches from the assessor's sampler.

        After a restore, brings the assessor to Lightning's epoch.

        Raises:
            ValueError: the sampler was passed as ``sampler=`` (or wrapped in a
                ``BatchSampler``), or no train dataloader uses it.
            RuntimeError: the dataloader's batch sampler is another
                ``MixedOrderBatchSampler`` (Lightning rebuilt it).
        """
        self._check_loaders(flat_loaders(trainer.train_dataloader))
        self._loader_copies = []
        # Lightning planned the loader's first epoch (iter) before this hook, so
        # moving the sampler here comes too late for it; on_fit_start does that
        # where it can, and this only catches what it could not.
        before = self.sampler.epoch
        self._catch_up(trainer.current_epoch)
        if self.sampler.epoch != before:
            warnings.warn(
                f"the restored epoch {before} was finished only once training had started: epoch "
                f"{self.sampler.epoch} may be planned from the scores before that epoch's assessment",
                UserWarning,
                stacklevel=2,
            )

    def _check_loaders(self, loaders: list) -> None:
        sampler = self.sampler
        for dl in loaders:
            if getattr(dl, "batch_sampler", None) is sampler:
                n = len(dl.dataset) if hasattr(dl.dataset, "__len__") else None
                if n is not None and n != sampler.num_samples_total:
                    raise ValueError(
                        f"the train dataloader's data set has {n} samples but the sampler was "
                        f"built for {sampler.num_samples_total}"
                    )
                return
        for dl in loaders:
            inner = getattr(getattr(dl, "batch_sampler", None), "sampler", None)
            if getattr(dl, "sampler", None) is sampler or inner is sampler:
                raise ValueError(
                    "the MixedOrderBatchSampler was passed to the DataLoader as sampler=; it "
                    "yields whole batches: pass DataLoader(dataset, batch_sampler=sampler) and "
                    "no batch_size, shuffle or drop_last"
                )
        for dl in loaders:
            if isinstance(getattr(dl, "batch_sampler", None), MixedOrderBatchSampler):
                raise RuntimeError(
                    "the train dataloader's batch_sampler is a MixedOrderBatchSampler, but not "
                    "the assessor's: Lightning rebuilds a custom batch sampler when "
                    "use_distributed_sampler=True and several processes run, or the data "
                    "loader was built with another sampler. Pass "
                    "Trainer(use_distributed_sampler=False) and "
                    "DataLoader(dataset, batch_sampler=assessor.sampler)"
                )
        kinds = [type(dl).__name__ for dl in loaders]
        raise ValueError(
            f"no train dataloader draws its batches from the assessor's sampler (found "
            f"{kinds}); build it as DataLoader(dataset, batch_sampler=assessor.sampler)"
        )

    # ------------------------------------------------------------------ #
    # the epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``assessor.start_epoch(trainer.current_epoch)``, which sets the sampler's epoch.

        Lightning skips this hook when it resumes in the middle of an epoch
        (the epoch then comes from the checkpoint) and after the last step of
        one (see :meth:`_catch_up`).
        """
        epoch = trainer.current_epoch
        self._ended_epoch = min(self._ended_epoch, epoch - 1)  # a new fit that counts from 0 again
        self._catch_up(epoch)
        self.assessor.start_epoch(epoch)

    def _catch_up(self, epoch: int) -> None:
        """Brings the assessor (and so the sampler) to ``epoch``, ending the epoch before if needed.

        Lightning resumes from a checkpoint written at the last step of an
        epoch without calling that epoch's ``on_train_epoch_end`` nor the next
        one's ``on_train_epoch_start``; the assessment and the new epoch happen
        here instead, before the loader draws the first batch.
        """
        if self.assessor.epoch >= epoch:
            return
        if self._ended_epoch < self.assessor.epoch:
            self.assessor.end_epoch()
            self._ended_epoch = self.assessor.epoch
        self.assessor.start_epoch(epoch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        """Hands the step's per-sample losses and indices to ``assessor.observe``.

        Raises:
            ValueError: the ``training_step`` output lacks the two entries, or
                they are not ``(B,)`` losses and ``(B,)`` integer indices.
        """
        if outputs is None or (
            isinstance(outputs, Mapping)
            and outputs.get("loss") is None
            and self.loss_key not in outputs
            and self.indices_key not in outputs
        ):
            return  # training_step returned None: Lightning skipped the step
        if not isinstance(outputs, Mapping) or self.loss_key not in outputs or self.indices_key not in outputs:
            got = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ValueError(
                f"training_step must return a dict with {self.loss_key!r}: the (B,) per-sample "
                f"losses (reduction='none') and {self.indices_key!r}: the (B,) data set indices "
                f"of the batch, beside 'loss'; got {got}. Return e.g. {{'loss': "
                f"per_sample.mean(), {self.loss_key!r}: per_sample, {self.indices_key!r}: idx}} "
                f"or set MoMBSCallback(loss_key=..., indices_key=...)"
            )
        loss, indices = outputs[self.loss_key], outputs[self.indices_key]
        if not torch.is_tensor(loss) or loss.ndim != 1 or not loss.is_floating_point():
            got = f"shape {tuple(loss.shape)} and dtype {loss.dtype}" if torch.is_tensor(loss) else type(loss).__name__
            raise ValueError(
                f"training_step output {self.loss_key!r} must be a (B,) float tensor of "
                f"per-sample losses (reduction='none'), got {got}"
            )
        idx = indices.detach() if torch.is_tensor(indices) else np.asarray(indices)
        integer = (
            not idx.is_floating_point() and not idx.is_complex() and idx.dtype != torch.bool
            if torch.is_tensor(idx)
            else np.issubdtype(idx.dtype, np.integer)
        )
        if not integer:
            raise ValueError(
                f"training_step output {self.indices_key!r} must be ({loss.shape[0]},) integer "
                f"data set indices, one per loss, got shape {tuple(idx.shape)} and dtype "
                f"{idx.dtype}: the batch carries no indices; wrap the data set in "
                f"mombs.IndexedDataset to get them"
            )
        if idx.ndim != 1 or idx.shape[0] != loss.shape[0]:
            raise ValueError(
                f"training_step output {self.indices_key!r} must be ({loss.shape[0]},) integer "
                f"data set indices, one per loss in {self.loss_key!r}, got shape "
                f"{tuple(idx.shape)}; return the batch's (B,) indices (idx.reshape(-1) for (B, 1))"
            )
        self.assessor.observe(idx, loss)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``assessor.end_epoch()``: the assessment pass, the merge across ranks, the next plan."""
        if self._ended_epoch >= self.assessor.epoch:
            return
        self.assessor.end_epoch()
        self._ended_epoch = self.assessor.epoch

    # ------------------------------------------------------------------ #
    # checkpoints

    def _epoch_batches(self) -> int:
        s = self.sampler
        return replica_layout(s.num_samples_total, s.batch_size, num_replicas=s.num_replicas, drop_last=s.drop_last)[
            "batches_per_replica"
        ]

    def _batches_done(self) -> int | None:
        """Batches of the current epoch the training loop has consumed (``None``: unknown).

        Lightning's ``processed`` count is what it skips when it resumes: it
        counts a batch once its training step has run, while a loader with
        workers draws further batches ahead of it.
        """
        if self._trainer is None:
            return None
        done = int(self._trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        return min(done, self._epoch_batches())

    def _tracker_state(self) -> dict:
        """The tracker's state with every rank's not yet merged values in it.

        Only rank 0's callback state reaches the checkpoint, so the values the
        other ranks recorded since the last merge are gathered into a copy
        first; the tracker itself is left as it is, so training goes on exactly
        as without the checkpoint. A collective call: Lightning writes
        checkpoints from every rank.
        """
        tracker = self.assessor.tracker
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return tracker.state_dict()
        merged = copy.deepcopy(tracker)
        merged.sync()
        return merged.state_dict()

    def state_dict(self) -> dict:
        """The assessor's and the sampler's states, for Lightning's checkpoint."""
        if self._assessor is None:
            return {}
        assessor = self.assessor.state_dict()
        assessor["tracker"] = self._tracker_state()
        return {
            "version": _STATE_VERSION,
            "assessor": assessor,
            "sampler": self.sampler.state_dict(batches_done=self._batches_done()),
            "ended_epoch": self._ended_epoch,
        }

    def _restore_now(self, sampler_state: dict, ended_epoch: int) -> dict:
        """The sampler state to load when the checkpoint is restored.

        An epoch that was trained and assessed before the checkpoint gives way
        to the next one, which a loader built before ``on_train_epoch_start``
        already plans. One whose batches were all trained but not yet assessed
        is finished in :meth:`on_fit_start`. A position inside an epoch is
        restored as saved: the sampler's length stays the whole epoch's, so
        Lightning sizes the resumed epoch right, and the sampler yields what is
        left of it (a ``StatefulDataLoader`` restores the same position itself).
        """
        epoch, done = int(sampler_state["epoch"]), int(sampler_state["batches_done"])
        if ended_epoch >= epoch:  # end_epoch() runs only once the epoch's last batch is done
            return {**sampler_state, "epoch": epoch + 1, "batches_done": 0, "epoch_scores": None}
        if done >= self._epoch_batches():
            return {**sampler_state, "batches_done": 0}
        return sampler_state

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Finds a ``StatefulDataLoader``'s copy of the sampler state in the checkpoint.

        Lightning saves a stateful train dataloader's state, and torchdata's
        includes the state of its batch sampler and of the sampler's iterator,
        which it restores when Lightning builds the loader's iterator, after
        the callbacks. Inside an epoch that copy is what restores the exact
        position. At an epoch's end it would bring back the finished epoch, so
        it gets the state the callback restores instead (see
        :meth:`_restore_now` and :meth:`on_fit_start`).
        """
        self._loader_copies = []
        if self._assessor is None:  # not fitting: a builder function was never called
            return
        mine = (checkpoint.get("callbacks") or {}).get(self.state_key) or {}
        saved = mine.get("sampler")
        loops = (checkpoint.get("loops") or {}).get("fit_loop") or {}
        if saved is None or not isinstance(loops.get("state_dict"), dict):
            return
        keys = ("num_samples", "batch_size", "num_replicas", "seed", "order")
        self._loader_copies = [
            holder
            for holder in sampler_holders(loops["state_dict"].get("combined_loader", []))
            if all(holder[SAMPLER_KEY].get(k) == saved.get(k) for k in keys)
        ]
        ended = int(mine.get("ended_epoch", -1))
        if ended >= int(saved["epoch"]) or int(saved["batches_done"]) >= self._epoch_batches():
            overwrite(self._loader_copies, self._restore_now(saved, ended))

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores :meth:`state_dict`."""
        if not state_dict:
            return
        if self._assessor is None:  # a builder function: applied once setup() has built it
            self._pending_state = state_dict
            return
        self._pending_state = None
        self._ended_epoch = int(state_dict["ended_epoch"])
        # The assessor first: it refeeds the sampler from the tracker, and the
        # sampler's own state (the scores its epoch was planned from) must win.
        self.assessor.load_state_dict(state_dict["assessor"])
        saved = state_dict["sampler"]
        self.sampler.load_state_dict(self._restore_now(saved, self._ended_epoch))
        self._finish_restored = (
            self._ended_epoch < int(saved["epoch"]) and int(saved["batches_done"]) >= self._epoch_batches()
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Ends a restored epoch whose batches were all trained but which was not assessed yet.

        A checkpoint written after an epoch's last step and before its
        ``on_train_epoch_end`` (``ModelCheckpoint`` after validation, say) holds
        a trained epoch without the scores that plan the next one. Lightning
        plans the train loader's first epoch (``iter``) before any train hook,
        so the assessment runs here: the model is restored and on its device by
        now, and the loader is not built yet. A ``StatefulDataLoader``'s copy of
        the sampler state, restored later, gets the new plan too.
        """
        if not self._finish_restored:
            return
        self._finish_restored = False
        self.assessor.end_epoch()
        self._ended_epoch = self.assessor.epoch
        self.sampler.set_epoch(self.assessor.epoch + 1)  # the assessor follows in on_train_epoch_start
        overwrite(self._loader_copies, self.sampler.state_dict(batches_done=0))
