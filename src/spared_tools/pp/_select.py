"""Placeholder for select_genes (being implemented)."""

from __future__ import annotations


def select_genes(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("select_genes")
