"""Placeholder for tpm, gene_lengths (being implemented)."""

from __future__ import annotations


def tpm(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("tpm")


def gene_lengths(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("gene_lengths")
