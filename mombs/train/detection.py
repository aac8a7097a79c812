"""The runner's detection pieces: the training step, the fit, FROC evaluation and the run's summary.

The runner's loop is the same for every task (:mod:`mombs.train.runner`);
what a detection run trains on, how it is scored and what its
``results.json`` reports are here. A torchvision Faster R-CNN computes its
own losses from ``(images, targets)``, so a detection run trains through a
step function (:class:`DetectionStep`) instead of ``loss_fn(model(x), y)``:

- the optimizer minimises the **sum of torchvision's four losses**
  (``loss_classifier``, ``loss_box_reg``, ``loss_objectness``,
  ``loss_rpn_box_reg``) of :func:`mombs.tasks.detection.detection_losses`;
- the assessor observes each image's **RPN objectness loss** from the same
  forward (the paper's difficulty, ``shared/METHOD.md`` §1);
- a strategy with per-sample weights (the self-paced ones) weights the
  per-image objectness losses, and the three batch-pooled losses by the
  batch's mean weight (torchvision gives no per-image RoI-head loss);
  without weights the objective is exactly the sum of the four losses.

Every step's random draws (the RPN's and RoI heads' anchor and proposal
samples) come from torch's generators seeded from ``(seed, epoch, step)``
and restored afterwards, so a resumed run repeats the uninterrupted one.

Evaluation is FROC (:func:`mombs.metrics.detection.froc`): the mean
sensitivity at 0.5, 1 and 2 false positives per image, higher = better.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..assessor import assessment_pass
from ..difficulty import difficulty_scores, quadrants
from ..envinfo import environment_info
from ..metrics.detection import FROC_AVERAGE_FPS, _sens_at, froc, unmatched_detection_score
from ..tasks.detection import detection_losses
from .segmentation import FLAGGED_PER_QUADRANT, detection_scores

__all__ = ["DET_ASSESS_BATCH_SIZE", "DetectionStep", "FROC_CURVE_FPS", "det_fit", "detect",
           "evaluate_detection", "summarize_detection"]

#: Images per assessment-pass batch (each of the K disturbed passes runs the RPN on all of them).
DET_ASSESS_BATCH_SIZE = 16
#: Images per evaluation forward.
EVAL_BATCH_SIZE = 32
#: FP-per-image rates at which a run stores its test FROC curve (for the report's plot).
FROC_CURVE_FPS = tuple(float(f) for f in np.round(np.geomspace(0.125, 16, 15), 4))
#: Detections per flagged image kept for the picture grid: those scoring at least this.
FLAGGED_SCORE = 0.5


def _step_seed(seed: int, epoch: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, step, 0xDE7]).generate_state(1)[0])


class DetectionStep:
    """One detection training forward: ``(model, images, targets) -> (outputs, per_image, objective)``.

    ``per_image`` is the ``(B,)`` RPN objectness loss of each image, with its
    graph (higher = worse fit); ``outputs`` the same values detached (what
    :func:`det_fit` reads); ``objective(weights)`` the scalar to minimise:
    the sum of torchvision's four losses for ``weights=None``, else the
    weighted mean of ``per_image`` plus the other three losses times
    ``weights.mean()`` (module docstring).

    Args:
        seed: the run's seed; step ``s`` of epoch ``e`` draws its anchor and
            proposal samples from torch's generators seeded from ``(seed, e, s)``
            (:func:`mombs.tasks.detection.seeded_torch_rng`: restored afterwards).
    """

    def __init__(self, seed: int = 0):
        self.seed, self.epoch, self.step = int(seed), 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Starts the step count of ``epoch``."""
        self.epoch, self.step = int(epoch), 0

    def __call__(self, model, images, targets):
        seed = _step_seed(self.seed, self.epoch, self.step)
        self.step += 1
        losses, per_image = detection_losses(model, images, targets, seed=seed)
        total = sum(losses.values())
        rest = total - losses["loss_objectness"]

        def objective(weights):
            if weights is None:
                return total
            return (per_image * weights).mean() + rest * weights.mean()

        return per_image.detach(), per_image, objective


def det_fit(outputs: torch.Tensor, targets=None) -> torch.Tensor:
    """How well a training forward fits each image's given boxes: ``(B,)`` in ``(0, 1]``.

    ``exp(-loss)`` of the per-image RPN objectness loss: the geometric mean,
    over the anchors the RPN sampled, of the probability it gives the anchor's
    label from the given boxes (higher = better fit).

    Args:
        outputs: ``(B,)`` per-image objectness losses (:class:`DetectionStep`'s outputs).
        targets: unused (the fit is read off the loss).
    """
    return torch.exp(-outputs.float())


def detect(model, dataset, indices=None, *, batch_size: int = EVAL_BATCH_SIZE) -> tuple[list, list]:
    """The detector's eval-mode detections on items of a data set, and their boxes.

    Args:
        model: a torchvision detector; put in eval mode.
        dataset: map-style, items ``(image (C, H, W), {"boxes": (n, 4), ...})``.
        indices: which items (default all), in that order.
        batch_size: images per forward.

    Returns:
        ``(detections, boxes)``: per item a dict of ``"boxes"`` ``(d, 4)`` and
        ``"scores"`` ``(d,)`` float32 arrays, and its ``(n, 4)`` target boxes.
    """
    device = next(model.parameters()).device
    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    model.eval()
    dets, gts = [], []
    with torch.no_grad():
        for s in range(0, idx.size, batch_size):
            items = [dataset[int(i)] for i in idx[s:s + batch_size]]
            out = model([im.to(device) for im, _ in items])
            for (_, t), o in zip(items, out):
                dets.append({"boxes": o["boxes"].cpu().numpy(), "scores": o["scores"].cpu().numpy()})
                gts.append(torch.as_tensor(t["boxes"]).reshape(-1, 4).numpy())
    return dets, gts


def evaluate_detection(model, dataset, _targets=None, batch_size: int = EVAL_BATCH_SIZE) -> tuple[float, list]:
    """FROC over a split: the runner's ``evaluate``.

    Args:
        model: the detector; put in eval mode.
        dataset: the split, items ``(image, target)`` with the clean boxes.
        _targets: unused (the boxes come with the items).
        batch_size: images per forward.

    Returns:
        ``(froc, detections)``: the mean sensitivity at 0.5, 1 and 2 false
        positives per image (IoU >= 0.5), in ``[0, 1]``, higher = better (NaN
        without lesions), and the detections of every image.
    """
    dets, gts = detect(model, dataset, batch_size=batch_size)
    return froc(dets, gts).average, dets


def _froc_fields(dets, gts) -> dict:
    r = froc(dets, gts)
    return {"average": r.average, "sens": {f"{f:g}": float(s) for f, s in zip(r.fps, r.sensitivity)},
            "curve": [_sens_at(r.fp_per_image, r.curve_sensitivity, f) if r.n_lesions else float("nan")
                      for f in FROC_CURVE_FPS], "lesions": r.n_lesions}


def _padded(rows: list, width: int) -> np.ndarray:
    """``(P, M, width)`` float32 of ragged ``(m_i, width)`` rows, NaN-padded."""
    m = max([len(r) for r in rows] + [1])
    out = np.full((len(rows), m, width), np.nan, dtype=np.float32)
    for i, r in enumerate(rows):
        r = np.asarray(r, dtype=np.float32).reshape(-1, width)
        out[i, :len(r)] = r
    return out


def _flagged_examples(data, codes, loss, train_dets: list, train_given: list) -> dict:
    """The highest-loss training images of each quadrant with their boxes and detections
    (``train_dets``, ``train_given``: :func:`detect`'s output on the whole training split)."""
    picks = []
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        picks.extend(members[np.argsort(-loss[members], kind="stable")[:FLAGGED_PER_QUADRANT]].tolist())
    picks = np.asarray(sorted(picks), dtype=np.int64)
    dets, given = [train_dets[i] for i in picks], [train_given[i] for i in picks]
    images = [data.train[int(i)][0] for i in picks]
    mid = [im[im.shape[0] // 2].float().numpy() for im in images]  # the key slice of 3 channels
    h, w = max(m.shape[0] for m in mid), max(m.shape[1] for m in mid)
    image = np.zeros((len(mid), h, w), dtype=np.float16)
    for i, m in enumerate(mid):
        image[i, :m.shape[0], :m.shape[1]] = m
    keep = [d["scores"] >= FLAGGED_SCORE for d in dets]
    clean = [data.clean_boxes_train[i] for i in picks] if data.clean_boxes_train is not None else [
        np.zeros((0, 4))] * len(picks)
    return {"index": picks, "image": image, "given": _padded(given, 4), "clean": _padded(clean, 4),
            "det": _padded([d["boxes"][k] for d, k in zip(dets, keep)], 4),
            "det_scores": _padded([d["scores"][k][:, None] for d, k in zip(dets, keep)], 1)[..., 0],
            "codes": codes[picks], "loss": loss[picks],
            "corruption": data.corruption[picks] if data.corruption is not None else np.full(len(picks), -1),
            "missing": data.missing_train[picks] if data.missing_train is not None else np.zeros(len(picks), bool)}


def summarize_detection(cfg, data, c, log: list, best: dict, x_te, y_te, out) -> dict:
    """The results of a finished detection run; writes ``assessment.npz`` and ``flagged.npz``.

    Reports the test FROC (final and best-validation models: the average
    sensitivity at 0.5, 1 and 2 FPs per image and each of 0.5 to 16), the
    final model's FROC curve, and, on the synthetic set, how well the
    poorly-labeled quadrant and the difficulty scores find the training
    images with missing boxes (``noise_detection``) and with any box noise
    (``noisy_detection``).

    Args:
        cfg: the run's :class:`~mombs.train.RunConfig`.
        data: its :class:`~mombs.data.det_corpus.DetCorpus`.
        c: the built :class:`~mombs.train.build.Components`.
        log: the per-epoch records.
        best: ``{"val", "epoch", "state"}`` of the best validation epoch.
        x_te: the test split (items ``(image, target)``).
        y_te: unused (the boxes come with the items).
        out: the run's folder.
    """
    from ..data.synthetic_det import DET_CORRUPTIONS

    model = c.model
    dets, gts = detect(model, x_te)
    final = _froc_fields(dets, gts)
    best_val = final
    if best["state"] is not None:
        final_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best["state"])
        best_val = _froc_fields(*detect(model, x_te))
        model.load_state_dict(final_state)

    device = next(model.parameters()).device
    (_, loss), (_, unc) = assessment_pass(
        model, c.train_set, at=c.at, k=cfg.k, alpha=cfg.alpha, task="detection",
        batch_size=DET_ASSESS_BATCH_SIZE, device=device,
        generator=torch.Generator(device=device).manual_seed(cfg.seed + 77))
    q = quadrants(loss, unc)
    n = len(loss)
    # A box-level signal beside the paper's image-level ones: a confident
    # detection that no given box covers points at a lesion left unboxed.
    train_dets, train_given = detect(model, data.train)  # one pass: the unmatched score and the pictures
    unmatched = unmatched_detection_score(train_dets, train_given)
    none = np.zeros(0, bool)
    np.savez_compressed(out / "assessment.npz", loss=loss, uncertainty=unc, codes=q.codes, unmatched=unmatched,
                        noisy=data.noisy_train if data.noisy_train is not None else none,
                        missing=data.missing_train if data.missing_train is not None else none,
                        corruption=data.corruption if data.corruption is not None else np.zeros(0, np.int64),
                        possibly_noisy=data.possibly_noisy if data.possibly_noisy is not None else none)
    np.savez_compressed(out / "flagged.npz", **_flagged_examples(data, q.codes, loss, train_dets, train_given))
    res = {
        "task": "detection", "metric": "froc", "dataset": data.name, "strategy": cfg.strategy,
        "loss": cfg.loss, "batch_size": cfg.batch_size, "seed": cfg.seed, "model": cfg.model,
        "epochs": cfg.epochs, "pivot_epoch": cfg.pivot_epoch,
        "froc": final["average"], "froc_best_val": best_val["average"], "best_val_epoch": best["epoch"],
        "val_froc": log[-1]["val_froc"], "froc_fps_averaged": list(FROC_AVERAGE_FPS),
        "froc_sens": final["sens"], "froc_sens_best_val": best_val["sens"],
        "froc_curve": {"fps": list(FROC_CURVE_FPS), "sensitivity": final["curve"]},
        "lesions": int(final["lesions"]), "train_size": int(n), "quadrant_counts": q.counts,
        "curves": {k: [r.get(k) for r in log] for k in ("val_froc", "test_froc", "train_loss", "train_fit",
                                                         "noisy_fit", "clean_fit", "seconds")},
        "seconds": float(sum(r["seconds"] for r in log)),
        "config": dataclasses.asdict(cfg), "key": cfg.key(), "data": data.describe(),
        "environment": environment_info(cfg.device),
    }
    scores = {"difficulty": difficulty_scores(loss, unc), "loss": loss, "uncertainty": unc, "unmatched": unmatched}
    poor = q.mask("poorly-labeled")
    if data.missing_train is not None and data.missing_train.any():
        res["noisy_fit"] = log[-1].get("noisy_fit")
        det = detection_scores(data.missing_train, scores, poor)
        det["target"] = "images with at least one lesion without a box"
        det["recall_by_corruption"] = {
            name: float(poor[data.corruption == i].mean())
            for i, name in enumerate(DET_CORRUPTIONS) if i and (data.corruption == i).any()}
        res["noise_detection"] = det
        res["noisy_detection"] = detection_scores(data.noisy_train, scores, poor)
    elif data.possibly_noisy is not None and data.possibly_noisy.any():
        res["possibly_noisy_detection"] = detection_scores(data.possibly_noisy, scores, poor)
    return res
