"""Placeholder for spatial_graph, neighbor_table (being implemented)."""

from __future__ import annotations


def spatial_graph(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("spatial_graph")


def neighbor_table(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("neighbor_table")
