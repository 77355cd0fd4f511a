"""Placeholder for completion (being implemented)."""

from __future__ import annotations


def completion(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("completion")
