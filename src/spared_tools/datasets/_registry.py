"""Placeholder for available, spared_info, load_spared, her2st, get_path (being implemented)."""

from __future__ import annotations


def available(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("available")


def spared_info(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("spared_info")


def load_spared(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("load_spared")


def her2st(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("her2st")


def get_path(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("get_path")
