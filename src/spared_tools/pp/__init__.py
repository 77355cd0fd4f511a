"""Preprocessing: the SpaRED pipeline and its steps."""

from __future__ import annotations

from ._graph import spatial_graph, neighbor_table
from ._moran import moran
from ._select import select_genes
from ._filter import filter_spared
from ._tpm import tpm, gene_lengths
from ._log import log1p
from ._combat import combat
from ._median import median_complete
from ._deltas import deltas
from ._patches import extract_patches, PatchDataset
from ._pipeline import spared_pipeline
from ._split import split_by

__all__ = ['PatchDataset', 'combat', 'deltas', 'extract_patches', 'filter_spared', 'gene_lengths', 'log1p', 'median_complete', 'moran', 'neighbor_table', 'select_genes', 'spared_pipeline', 'spatial_graph', 'split_by', 'tpm']
