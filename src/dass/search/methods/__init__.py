"""Search methods as classes behind one interface, selectable by name (``search.method``, ``--method``)."""

from .base import (METHODS, SearchBatch, SearchMethod, StepPosition, available_methods, get_method,
                   register_method)
from .darts import Darts
from .proxyless import PathSampler, Proxyless, SampledMixedOp

__all__ = ["METHODS", "SearchBatch", "SearchMethod", "StepPosition", "available_methods", "get_method",
           "register_method", "Darts", "PathSampler", "Proxyless", "SampledMixedOp"]
