"""Metrics: Fréchet distance, k-NN precision/recall, digits-classifier metrics, 2-D metrics, bits/dim.

Runtime imports: scipy (frechet_distance's sqrtm); the digits metrics load the shipped classifier weights
(package data fastdiff/metrics/weights/digits_classifier.pt) and the digits from scikit-learn.
"""
from fastdiff.metrics.digits import classifier_accuracy, digits_fd, digits_features, digits_precision_recall
from fastdiff.metrics.digits_classifier import DigitsClassifier, load_digits_classifier
from fastdiff.metrics.frechet import feature_fd, frechet_distance, gaussian_stats
from fastdiff.metrics.nll import bits_per_dim
from fastdiff.metrics.precision_recall import precision_recall
from fastdiff.metrics.toy2d import ModeStats, gaussian_fd, mmd, mode_mmd, mode_stats, nearest_mode

__all__ = [
    "DigitsClassifier",
    "ModeStats",
    "bits_per_dim",
    "classifier_accuracy",
    "digits_fd",
    "digits_features",
    "digits_precision_recall",
    "feature_fd",
    "frechet_distance",
    "gaussian_fd",
    "gaussian_stats",
    "load_digits_classifier",
    "mmd",
    "mode_mmd",
    "mode_stats",
    "nearest_mode",
    "precision_recall",
]
