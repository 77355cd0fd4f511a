"""Placeholder for filtering (being implemented)."""

from __future__ import annotations


def filtering(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("filtering")
