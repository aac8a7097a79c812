"""A small CNN that trains in minutes on two CPU cores."""

import torch.nn as nn

__all__ = ["SmallCNN"]


def _block(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Three conv blocks (32, 64, 128 channels), global average pooling, a linear classifier.

    About 94k parameters. ``pool`` outputs the ``(B, 128)`` features MoMBS
    disturbs, so the part after it is one linear layer and the ``K`` disturbed
    passes cost almost nothing.

    Args:
        num_classes: outputs of the classifier.
        in_channels: image channels (1 for Fashion-MNIST, 3 for CIFAR).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            *_block(in_channels, 32), nn.MaxPool2d(2), *_block(32, 64), nn.MaxPool2d(2), *_block(64, 128)
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)))
