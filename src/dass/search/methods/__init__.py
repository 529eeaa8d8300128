"""Search methods as classes behind one interface, selectable by name (``search.method``, ``--method``)."""

from .base import (METHODS, EpochEnd, MethodPhase, SearchBatch, SearchMethod, StepPosition, available_methods,
                   get_method, register_method)
from .darts import Darts
from .darts_pt import DartsPT, DartsPTConfig, DartsPTFixedAlpha, ProjectedMixedOp
from .proxyless import PathSampler, Proxyless, SampledMixedOp
from .rarts import Rarts
from .sd_darts import SdDarts
from .sharp_darts import MaxWMixedOp, SharpDarts

__all__ = ["METHODS", "EpochEnd", "MethodPhase", "DartsPT", "DartsPTConfig", "DartsPTFixedAlpha",
           "ProjectedMixedOp", "SearchBatch", "SearchMethod", "StepPosition", "available_methods", "get_method",
           "register_method", "Darts", "PathSampler", "Proxyless", "SampledMixedOp", "Rarts", "SdDarts", "MaxWMixedOp",
           "SharpDarts"]
