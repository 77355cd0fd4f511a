"""Placeholder for median_complete (being implemented)."""

from __future__ import annotations


def median_complete(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("median_complete")
