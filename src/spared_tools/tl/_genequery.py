"""Placeholder for genequery_predict, GeneQueryModel (being implemented)."""

from __future__ import annotations


def genequery_predict(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("genequery_predict")


class GeneQueryModel:
    """Not implemented yet."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("GeneQueryModel")
