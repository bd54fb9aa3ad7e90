"""Metrics: 2-D mode coverage and sample quality."""
from fastdiff.metrics.toy2d import ModeStats, mode_stats, nearest_mode

__all__ = ["ModeStats", "mode_stats", "nearest_mode"]
