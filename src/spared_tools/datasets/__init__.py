"""Datasets: the SpaRED registry, her2st and a bundled example."""

from ._example import example
from ._registry import available, get_path, her2st, load_spared, spared_info

__all__ = ["available", "example", "get_path", "her2st", "load_spared", "spared_info"]
