"""Training strategies behind one interface, picked by name from a registry.

======================  ==========================================================
name                    what it does
======================  ==========================================================
random                  plain shuffled minibatches (RaMBS, the baseline)
mixed                   MoMBS: balanced batches from loss + uncertainty ranks
mixed-loss              MoMBS with the loss rank only (Mo+l)
mixed-uncertainty       MoMBS with the uncertainty rank only (Mo+u)
mixed-entropy           MoMBS with the plain entropy of the training forward (K = 1, no noise)
anti                    hard with hard, easy with easy (the opposite pairing)
scl-hard                self-paced: weight 0 above a growing loss threshold
scl-linear              self-paced, linear soft weights (Jiang et al. 2014)
scl-log                 self-paced, logarithmic soft weights
scl-mixture             self-paced, mixture weights
ohem                    the top-loss fraction is seen twice in the next epoch
======================  ==========================================================
"""

from . import ohem, sampling, scl  # noqa: F401  (registers the strategies)
from .base import STRATEGY_REGISTRY, Strategy, create_strategy, register_strategy

__all__ = ["STRATEGY_REGISTRY", "Strategy", "create_strategy", "register_strategy"]
