"""Lookups in benchmark tables the user has (dass ships and downloads none)."""

from .nb201 import lookup

__all__ = ["lookup"]
