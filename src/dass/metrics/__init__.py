"""Parameter and nonzero counts, dense and sparse multiply-adds, latency."""

from .counting import Counts, count, deployable_parameters
from .latency import measure_latency

__all__ = ["Counts", "count", "deployable_parameters", "measure_latency"]
