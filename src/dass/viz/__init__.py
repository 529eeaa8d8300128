"""Plots of a search: architecture weights over time, and drawings of the two cells."""

from .plots import draw_genotype, plot_alpha_history

__all__ = ["draw_genotype", "plot_alpha_history"]
