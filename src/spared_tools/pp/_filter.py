"""Placeholder for filter_spared (being implemented)."""

from __future__ import annotations


def filter_spared(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("filter_spared")
