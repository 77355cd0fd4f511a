"""Placeholder for read_st, read_her2st (being implemented)."""

from __future__ import annotations


def read_st(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("read_st")


def read_her2st(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("read_her2st")
