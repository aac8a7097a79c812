"""mombs: mixed-order minibatch sampling for diverse-quality training data."""
__version__ = "0.1.0"
