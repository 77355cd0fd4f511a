"""Placeholder for evaluate_completion (being implemented)."""

from __future__ import annotations


def evaluate_completion(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("evaluate_completion")
