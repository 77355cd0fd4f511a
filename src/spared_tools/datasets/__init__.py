"""Datasets: the SpaRED registry, her2st and a bundled example."""

from __future__ import annotations

from ._registry import available, spared_info, load_spared, her2st, get_path
from ._example import example

__all__ = ['available', 'example', 'get_path', 'her2st', 'load_spared', 'spared_info']
