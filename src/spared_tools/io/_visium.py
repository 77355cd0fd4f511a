"""Placeholder for read_visium (being implemented)."""

from __future__ import annotations


def read_visium(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("read_visium")
