"""Placeholder for split_by (being implemented)."""

from __future__ import annotations


def split_by(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("split_by")
