"""Placeholder for example (being implemented)."""

from __future__ import annotations


def example(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("example")
