"""Placeholder for spatial (being implemented)."""

from __future__ import annotations


def spatial(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("spatial")
