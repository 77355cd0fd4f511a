"""Placeholder for prediction (being implemented)."""

from __future__ import annotations


def prediction(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("prediction")
