"""Placeholder for spared_pipeline (being implemented)."""

from __future__ import annotations


def spared_pipeline(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("spared_pipeline")
