"""How to search: the architect (first/second order) and the DASS schedule."""

from .architect import Architect, LowerLevel, cross_entropy_loss
from .config import SearchRunConfig, make_config
from .searcher import DassSearch, PhasePlan, SearchResult, phase_plan, resume, search

__all__ = [
    "Architect", "LowerLevel", "cross_entropy_loss", "SearchRunConfig", "make_config", "DassSearch",
    "PhasePlan", "SearchResult", "phase_plan", "resume", "search",
]
