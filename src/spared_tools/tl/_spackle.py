"""Placeholder for spackle_complete, SpackleModel (being implemented)."""

from __future__ import annotations


def spackle_complete(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("spackle_complete")


class SpackleModel:
    """Not implemented yet."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("SpackleModel")
