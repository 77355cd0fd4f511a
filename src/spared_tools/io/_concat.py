"""Placeholder for concat_slides (being implemented)."""

from __future__ import annotations


def concat_slides(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("concat_slides")
