"""Placeholder for log1p (being implemented)."""

from __future__ import annotations


def log1p(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("log1p")
