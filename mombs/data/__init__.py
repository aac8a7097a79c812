"""Data set wrappers and readers."""

from .indexed import IndexedDataset

__all__ = ["IndexedDataset"]
