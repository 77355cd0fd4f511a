"""Placeholder for moran (being implemented)."""

from __future__ import annotations


def moran(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("moran")
