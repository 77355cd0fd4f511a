"""Placeholder for combat (being implemented)."""

from __future__ import annotations


def combat(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("combat")
