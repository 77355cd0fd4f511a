"""Placeholder for training_history (being implemented)."""

from __future__ import annotations


def training_history(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("training_history")
