"""Evaluation metrics beyond top-1 accuracy.

=====================  ==========================================================
name                   what it measures
=====================  ==========================================================
dice_per_image         ``(B,)`` Dice per image (MONAI ``DiceMetric``), NaN for
                       images without ground-truth foreground by default
mean_dice              the mean over a set, NaN images left out
lesion_sensitivity     ``(found, total)`` ground-truth lesions (connected
                       components) that the prediction overlaps
small_lesion_dice      mean Dice over images whose lesion area is small
=====================  ==========================================================

MONAI and scipy are imported at the first call (``pip install 'mombs[seg]'``).
"""

from .segmentation import dice_per_image, lesion_sensitivity, mean_dice, small_lesion_dice

__all__ = ["dice_per_image", "lesion_sensitivity", "mean_dice", "small_lesion_dice"]
