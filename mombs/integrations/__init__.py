"""Thin adapters that plug mombs into training frameworks.

Each submodule imports its framework when it is itself imported, never here,
so that ``import mombs`` works without any of them installed:

- :mod:`mombs.integrations.lightning`: ``MoMBSCallback`` for PyTorch Lightning
  (``pip install 'mombs[lightning]'``);
- :mod:`mombs.integrations.transformers`: ``MoMBSTrainer`` for Hugging Face
  transformers (``pip install 'mombs[transformers]'``).
"""
