"""Embedded data sets (no downloads): 2-D toy mixtures with their exact ε-predictors."""
from fastdiff.data.toy import GaussianMixture, MixtureEpsModel, grid25, ring8

__all__ = ["GaussianMixture", "MixtureEpsModel", "grid25", "ring8"]
