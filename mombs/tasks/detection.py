"""Two-stage detection: per-image RPN signals of a torchvision Faster R-CNN.

MoMBS measures a detector where the paper found the better difficulty signal,
at the region proposal network (``shared/METHOD.md`` §1 and §6):

- **loss**: the RPN's anchor-classification (objectness) loss of each image,
  :func:`rpn_objectness_loss`. torchvision's ``RegionProposalNetwork`` pools it
  over the batch: it samples ``batch_size_per_image`` anchors per image with
  its ``BalancedPositiveNegativeSampler`` and takes one binary cross-entropy
  mean over all sampled anchors of all images. Here the same anchors are
  matched by the RPN's own ``assign_targets_to_anchors`` and sampled by its
  own ``fg_bg_sampler``, and the cross-entropy is averaged over each image's
  sampled anchors instead. Every image samples the same number of anchors
  (``batch_size_per_image``, 256 by default) unless it has fewer labelled
  anchors than that, so the mean over images is torchvision's
  ``loss_objectness`` (tested); in general the mean weighted by the anchors
  each image sampled is.
- **uncertainty**: the binary entropy of the RPN objectness, the mean
  probability over ``K`` passes with the first backbone block's output
  disturbed (:data:`mombs.recipes.detection.models.DET_FEATURE_MODULE`), averaged per
  image over **every anchor of every FPN level, before NMS, whose centre lies
  inside the image** (:func:`anchor_binary_entropy`). The paper takes "the
  entropy of the RPN classification maps", which is the whole map. A
  pre-NMS top-k would be a different set of anchors in every disturbed pass
  (the noise moves the scores that pick them), so the mean prediction would
  not be over one set. Anchors centred on the padding that batching adds
  (images are padded to a common size divisible by 32) are left out, so an
  image's value does not depend on the images it was batched with. Most
  anchors are confident background, so the values are small; only their
  ranks are used.

Anchor sampling is random: torchvision's sampler draws ``torch.randperm``
from torch's global generator of the labels' device. :func:`rpn_objectness_loss`
runs it inside ``torch.random.fork_rng`` with that generator seeded from
``seed``, so the sample is reproducible and the caller's global random state
is the same after the call as before it. Nothing in torchvision is patched:
the functions here call the model's own submodules and methods.

The adapter registered as ``"detection"`` carries the loss, the prediction
(the objectness map) and the uncertainty reduction, and its passes run the
detector through :func:`rpn_forward` and batch items with
:func:`collate_detection`, so ``task="detection"`` is all the assessor needs:

.. code-block:: python

    from mombs.recipes.detection.models import DET_FEATURE_MODULE, create_detection_model

    model = create_detection_model("tiny")
    assessor = DifficultyAssessor(model, IndexedDataset(train), at=DET_FEATURE_MODULE["tiny"],
                                  task="detection", batch_size=8)

A training step that also yields the per-image loss (the assessor's default
schedule reuses the training loss) is :func:`detection_losses`. Only the
schedules whose uncertainty comes from an assessment pass fit detection: the
``train-*`` ones read the training forward's output, which for torchvision is
a loss dict.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
import torch.nn.functional as F

from .._checks import check_int
from .base import TaskAdapter, register_task

__all__ = [
    "DETECTION",
    "anchor_binary_entropy",
    "collate_detection",
    "detection_losses",
    "rpn_forward",
    "rpn_objectness_loss",
    "rpn_objectness_map",
    "rpn_uncertainty",
    "seeded_torch_rng",
]

_EPS = 1e-12


def _check_seed(seed) -> int:
    check_int("seed", seed, 0)
    return int(seed)


@contextlib.contextmanager
def seeded_torch_rng(seed: int, device):
    """Torch's global generators of the CPU and of ``device``, seeded, then restored.

    For code that draws from torch's global generators and cannot be given a
    private one (torchvision's ``BalancedPositiveNegativeSampler``, its
    multi-scale resize): inside the block the CPU generator, and the CUDA
    generator of ``device`` when it is a CUDA device, start from ``seed``;
    after it, every one of them is back in the state it had before
    (``torch.random.fork_rng``). No other device's generator is touched.

    Args:
        seed: integer ``>= 0``.
        device: the device whose generator the code inside draws from.
    """
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            torch.default_generator.manual_seed(seed)
            torch.cuda.default_generators[index].manual_seed(seed)
            yield
    elif device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
    else:
        raise ValueError(f"device={device} is not supported for seeded anchor sampling: use 'cpu' or 'cuda'")


def collate_detection(batch) -> tuple:
    """Collates ``(index, image, target, ...)`` items for detection.

    Returns:
        ``(indices, images, targets, ...)``: a ``(B,)`` int64 tensor of the
        indices, then a list of ``B`` entries per remaining field (images
        ``(C, H, W)`` may differ in size; targets are dicts with ``"boxes"``
        ``(n, 4)`` and ``"labels"`` ``(n,)``), as torchvision's detectors take them.
    """
    fields = list(zip(*batch))
    return (torch.as_tensor(fields[0], dtype=torch.int64), *(list(f) for f in fields[1:]))


def _check_detector(model) -> None:
    missing = [name for name in ("transform", "backbone", "rpn") if not hasattr(model, name)]
    if missing or not hasattr(model.rpn, "head") or not hasattr(model.rpn, "anchor_generator"):
        raise ValueError(
            f"model={type(model).__name__} is not a torchvision GeneralizedRCNN (Faster R-CNN): "
            f"it needs .transform, .backbone and .rpn with .head and .anchor_generator"
        )


def _rpn_maps(rpn, image_list, features):
    """The RPN head's outputs over all anchors: what ``RegionProposalNetwork.forward`` computes first."""
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    feats = list(features.values())
    objectness, deltas = rpn.head(feats)
    anchors = rpn.anchor_generator(image_list, feats)
    per_level = [o[0].numel() for o in objectness]  # anchors per level: A * H * W
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)  # (N * total, 1), (N * total, 4)
    return objectness, deltas, anchors, per_level


def _inside(anchors: list, image_sizes: list) -> torch.Tensor:
    """``(B, A)`` bool: the anchor's centre lies inside the image (not its batch padding)."""
    rows = []
    for a, (h, w) in zip(anchors, image_sizes):
        cx, cy = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
        rows.append((cx >= 0) & (cx < w) & (cy >= 0) & (cy < h))
    return torch.stack(rows)


def _images_list(images) -> list:
    if torch.is_tensor(images):
        if images.ndim != 4:
            raise ValueError(f"images as a tensor must be (B, C, H, W), got {tuple(images.shape)}")
        return list(images)
    if not isinstance(images, (list, tuple)) or not all(torch.is_tensor(i) and i.ndim == 3 for i in images):
        raise ValueError("images must be a list of (C, H, W) tensors or a (B, C, H, W) tensor")
    return list(images)


def rpn_forward(model, images) -> dict:
    """The detector up to its RPN's objectness over all anchors: the assessor's ``forward_fn``.

    Runs ``model.transform`` (normalise, resize, batch), ``model.backbone``,
    ``model.rpn.head`` and ``model.rpn.anchor_generator``, in whatever mode
    the model is in; no proposals, no RoI heads, no targets. In eval mode
    nothing random is drawn. (In train mode torchvision's transform picks its
    resize from torch's global generator, as ``model(images, targets)`` does.)

    When the output of the disturbed block is tiled by
    :func:`mombs.feature_noise_uncertainty` (``reps`` copies of the batch),
    the maps come back with ``reps * B`` rows, copy-major, and the anchor
    mask is tiled to match.

    Args:
        model: a torchvision ``FasterRCNN`` (any ``GeneralizedRCNN`` with an RPN).
        images: a list of ``B`` images ``(C, H, W)`` or a ``(B, C, H, W)`` tensor,
            in the value range the model's transform expects.

    Returns:
        A dict: ``"objectness"`` ``(N, A)`` logits over all anchors of all
        levels (``N = B``, or ``reps * B``); ``"in_image"`` ``(N, A)`` bool,
        anchors centred inside their image; ``"anchors"``: ``B`` tensors
        ``(A, 4)`` in the resized frame; ``"image_sizes"`` and
        ``"original_sizes"``: ``B`` pairs ``(h, w)``; ``"rpn"``: the model's
        RPN, whose matcher and sampler :func:`rpn_objectness_loss` uses.
    """
    _check_detector(model)
    images = _images_list(images)
    original = [tuple(int(s) for s in img.shape[-2:]) for img in images]
    image_list, _ = model.transform(images)
    features = model.backbone(image_list.tensors)
    if torch.is_tensor(features):
        features = OrderedDict([("0", features)])
    objectness, _, anchors, _ = _rpn_maps(model.rpn, image_list, features)
    b = len(anchors)
    objectness = objectness.reshape(-1, anchors[0].shape[0])
    inside = _inside(anchors, image_list.image_sizes)
    if objectness.shape[0] != b:  # tiled copies of the disturbed block's output
        inside = inside.repeat(objectness.shape[0] // b, 1)
    return {
        "objectness": objectness,
        "in_image": inside,
        "anchors": anchors,
        "image_sizes": [tuple(int(s) for s in hw) for hw in image_list.image_sizes],
        "original_sizes": original,
        "rpn": model.rpn,
    }


def rpn_objectness_map(outputs: dict) -> torch.Tensor:
    """The adapter's prediction: ``(N, A)`` objectness logits, NaN for anchors
    centred outside their image (:func:`anchor_binary_entropy` skips them)."""
    if not isinstance(outputs, dict) or "objectness" not in outputs or "in_image" not in outputs:
        raise TypeError(
            "outputs must be what rpn_forward returns (task='detection' uses it; "
            "a forward_fn of your own must return the same dict)"
        )
    return outputs["objectness"].masked_fill(~outputs["in_image"], float("nan"))


def anchor_binary_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-image binary entropy of objectness probabilities, averaged over anchors.

    Args:
        probs: ``(B, A)`` mean objectness probabilities; NaN marks anchors
            that do not count (centred outside the image).

    Returns:
        ``(B,)`` float32 in ``[0, log 2]`` nats, higher = more uncertain; NaN
        for an image with no anchor left.
    """
    if not torch.is_tensor(probs) or probs.ndim != 2:
        got = tuple(probs.shape) if torch.is_tensor(probs) else type(probs).__name__
        raise ValueError(f"probs must be (B, A) objectness probabilities, got {got}")
    p = probs.float()
    ent = -(p * p.clamp_min(_EPS).log() + (1 - p) * (1 - p).clamp_min(_EPS).log())
    return torch.nanmean(ent, dim=1)


def _target_boxes(targets, original_sizes, image_sizes, device) -> list:
    from torchvision.models.detection.transform import resize_boxes

    if not isinstance(targets, (list, tuple)) or len(targets) != len(image_sizes):
        raise ValueError(f"targets must be a list of {len(image_sizes)} dicts with 'boxes', one per image")
    out = []
    for t, orig, new in zip(targets, original_sizes, image_sizes):
        if not isinstance(t, dict) or "boxes" not in t:
            raise ValueError("each target must be a dict with 'boxes' (n, 4) in (x1, y1, x2, y2) pixels")
        boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        out.append({"boxes": resize_boxes(boxes, orig, new)})
    return out


def _sampled_bce(rpn, objectness: torch.Tensor, labels: list, seed: int | None):
    """Per-image sums of BCE over the anchors the RPN's sampler picks, and their counts.

    ``objectness`` is ``(B, A)`` logits, ``labels`` ``B`` tensors ``(A,)`` in
    ``{-1, 0, 1}``. The sampler draws from torch's global generator: seeded
    and restored around it when ``seed`` is given (torchvision's own draws
    otherwise, as in its training forward).
    """
    ctx = seeded_torch_rng(seed, labels[0].device) if seed is not None else contextlib.nullcontext()
    with ctx:
        pos, neg = rpn.fg_bg_sampler(labels)
    sums, counts = [], []
    for b, (p, n, lab) in enumerate(zip(pos, neg, labels)):
        keep = (p | n).bool()
        bce = F.binary_cross_entropy_with_logits(objectness[b][keep], lab[keep], reduction="sum")
        sums.append(bce)
        counts.append(keep.sum())
    return torch.stack(sums), torch.stack(counts).to(objectness.dtype), pos


def rpn_objectness_loss(outputs: dict, targets, *, seed: int | None = 0) -> torch.Tensor:
    """Per-image RPN anchor-classification loss, the adapter's ``loss_fn``.

    The ground-truth boxes are resized as the model's transform resized the
    image, matched to the anchors by the RPN's ``assign_targets_to_anchors``
    (IoU >= ``fg_iou_thresh`` positive, < ``bg_iou_thresh`` negative, the best
    anchor of each box positive, the rest ignored), sampled by its
    ``fg_bg_sampler`` (``batch_size_per_image`` anchors, at most
    ``positive_fraction`` of them positive), and the binary cross-entropy on
    the logits is averaged over each image's sampled anchors.

    Args:
        outputs: what :func:`rpn_forward` returns (``B`` rows, not tiled).
        targets: ``B`` dicts with ``"boxes"`` ``(n, 4)``, ``(x1, y1, x2, y2)``
            in the pixels of the image as given (``n = 0`` is a lesion-free
            image: all its sampled anchors are negatives).
        seed: seed of the anchor sampling (module docstring); ``None`` draws
            from torch's global generator as torchvision does.

    Returns:
        ``(B,)`` losses, higher = worse fit, ``>= 0``. With the same sample,
        their mean is torchvision's batch ``loss_objectness`` whenever every
        image sampled the same number of anchors (the usual case; see the
        module docstring).

    Raises:
        ValueError: for outputs or targets of the wrong form or count, or a bad seed.
    """
    if not isinstance(outputs, dict) or "rpn" not in outputs or "anchors" not in outputs:
        raise ValueError(
            "outputs must be what rpn_forward returns (task='detection' uses it; "
            "a forward_fn of your own must return the same dict)"
        )
    seed = None if seed is None else _check_seed(seed)
    objectness, anchors = outputs["objectness"], outputs["anchors"]
    if objectness.shape[0] != len(anchors):
        raise ValueError(
            f"outputs hold {objectness.shape[0]} rows for {len(anchors)} images: the loss "
            f"needs an undisturbed forward, not tiled copies"
        )
    rpn = outputs["rpn"]
    boxes = _target_boxes(targets, outputs["original_sizes"], outputs["image_sizes"], objectness.device)
    labels, _ = rpn.assign_targets_to_anchors(anchors, boxes)
    sums, counts, _ = _sampled_bce(rpn, objectness, labels, seed)
    return sums / counts.clamp_min(1)


def detection_losses(model, images, targets, *, seed: int | None = None) -> tuple[dict, torch.Tensor]:
    """A training forward: torchvision's loss dict and the per-image RPN loss, from one pass.

    Does what ``model(images, targets)`` does in train mode (transform,
    backbone, RPN, RoI heads), calling the model's own submodules and
    methods, and keeps the RPN objectness loss of each image as well. With
    the same random state the four losses equal ``model(images, targets)``'s
    (tested), and ``loss_objectness`` is the per-image losses' mean weighted
    by the anchors each image sampled (the plain mean when all sampled
    ``batch_size_per_image``).

    Args:
        model: a torchvision ``FasterRCNN`` in train mode.
        images: ``B`` images ``(C, H, W)`` (or a ``(B, C, H, W)`` tensor).
        targets: ``B`` dicts with ``"boxes"`` ``(n, 4)`` and ``"labels"`` ``(n,)``.
        seed: ``None`` draws the resize scale and the RPN's and RoI heads'
            anchor/proposal samples from torch's global generators, exactly as
            ``model(images, targets)`` does; an integer draws them from those
            generators seeded with it and restores them afterwards
            (:func:`seeded_torch_rng`), leaving the caller's state as it was.

    Returns:
        ``(losses, per_image)``: torchvision's dict (``loss_classifier``,
        ``loss_box_reg``, ``loss_objectness``, ``loss_rpn_box_reg``), each with
        its graph, and ``(B,)`` per-image objectness losses with their graph
        (detach them before :meth:`mombs.DifficultyAssessor.observe`).

    Raises:
        ValueError: for a model not in train mode or not a torchvision detector.
    """
    _check_detector(model)
    if not model.training:
        raise ValueError(
            "detection_losses needs the model in train mode (model.train()); for eval-mode "
            "signals use rpn_forward and rpn_objectness_loss"
        )
    seed = None if seed is None else _check_seed(seed)
    images = _images_list(images)
    device = images[0].device if images else torch.device("cpu")
    ctx = seeded_torch_rng(seed, device) if seed is not None else contextlib.nullcontext()
    with ctx:
        image_list, targets = model.transform(images, [dict(t) for t in targets])
        features = model.backbone(image_list.tensors)
        if torch.is_tensor(features):
            features = OrderedDict([("0", features)])
        rpn = model.rpn
        objectness, deltas, anchors, per_level = _rpn_maps(rpn, image_list, features)
        b = len(anchors)
        proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(b, -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, objectness, image_list.image_sizes, per_level)
        labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
        regression = torch.cat(rpn.box_coder.encode(matched, anchors), dim=0)
        sums, counts, pos = _sampled_bce(rpn, objectness.reshape(b, -1), labels, None)
        total = counts.sum().clamp_min(1)
        pos_idx = torch.where(torch.cat(pos, dim=0))[0]
        # torchvision's box term: smooth L1 over the positives, divided by all sampled anchors
        box_loss = F.smooth_l1_loss(deltas[pos_idx], regression[pos_idx], beta=1 / 9, reduction="sum") / total
        _, detector_losses = model.roi_heads(features, boxes, image_list.image_sizes, targets)
    losses = {**detector_losses, "loss_objectness": sums.sum() / total, "loss_rpn_box_reg": box_loss}
    return losses, sums / counts.clamp_min(1)


def rpn_uncertainty(
    model, images, *, at: str, k: int = 8, alpha: float = 0.3, seed: int = 0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The K-pass RPN objectness uncertainty of each image.

    :func:`mombs.feature_noise_uncertainty` with this module's parts: the
    output of ``at`` is multiplied by ``1 + U(-alpha, alpha)`` noise in each
    of ``k`` passes of :func:`rpn_forward`, the sigmoid objectness is averaged
    over the passes, and :func:`anchor_binary_entropy` reduces it per image.
    The model runs in eval mode without gradients; every module's mode and
    the BatchNorm statistics are as they were afterwards.

    Args:
        model: a torchvision ``FasterRCNN``.
        images: ``B`` images ``(C, H, W)``, or a ``(B, C, H, W)`` tensor.
        at: the disturbed module, e.g. ``DET_FEATURE_MODULE[name]``.
        k: disturbed passes, ``>= 1`` (paper: 8).
        alpha: noise half-width in ``[0, 1)`` (0.3).
        seed: seed of the noise generator when ``generator`` is not given.
        generator: private noise generator.

    Returns:
        ``(B,)`` float32 entropies in ``[0, log 2]``, higher = more uncertain.
    """
    from ..noise import feature_noise_uncertainty

    _check_detector(model)
    return feature_noise_uncertainty(
        model,
        images if torch.is_tensor(images) else list(images),
        at=at,
        k=k,
        alpha=alpha,
        activation="sigmoid",
        generator=generator,
        seed=seed,
        output_fn=rpn_objectness_map,
        uncertainty_fn=anchor_binary_entropy,
        forward_fn=rpn_forward,
    )


#: The registered adapter: :func:`rpn_objectness_loss` (seed 0),
#: :func:`rpn_objectness_map` as the prediction, sigmoid, and
#: :func:`anchor_binary_entropy`; its passes run :func:`rpn_forward` and batch
#: items with :func:`collate_detection`.
DETECTION = register_task(
    TaskAdapter(
        "detection",
        loss_fn=rpn_objectness_loss,
        output_fn=rpn_objectness_map,
        activation="sigmoid",
        uncertainty_fn=anchor_binary_entropy,
        forward_fn=rpn_forward,
        collate_fn=collate_detection,
    )
)
