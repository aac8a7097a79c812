import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=60, deadline=None)
settings.load_profile("ci")


def rank_sum(n: int, seed: int = 0) -> np.ndarray:
    """Difficulty-like scores: the sum of the ascending ranks of two correlated measures."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n)
    b = 0.5 * a + rng.standard_normal(n)
    ra = np.empty(n)
    rb = np.empty(n)
    ra[np.argsort(a)] = np.arange(n)
    rb[np.argsort(b)] = np.arange(n)
    return ra + rb


@pytest.fixture
def scores_1k():
    return rank_sum(1000)
