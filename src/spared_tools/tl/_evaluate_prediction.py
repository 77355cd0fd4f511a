"""Placeholder for evaluate_prediction (being implemented)."""

from __future__ import annotations


def evaluate_prediction(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("evaluate_prediction")
