"""Placeholder for deltas (being implemented)."""

from __future__ import annotations


def deltas(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("deltas")
