"""Preprocessing: the SpaRED pipeline and its steps."""

from ._combat import combat
from ._deltas import deltas
from ._filter import filter_spared
from ._graph import neighbor_table, spatial_graph
from ._image_features import context_features, image_features
from ._log import log1p
from ._median import median_complete
from ._moran import moran
from ._patches import PatchDataset, extract_patches
from ._pipeline import spared_pipeline
from ._select import select_genes
from ._split import split_by
from ._tpm import gene_lengths, tpm

__all__ = [
    "PatchDataset",
    "combat",
    "context_features",
    "deltas",
    "extract_patches",
    "filter_spared",
    "gene_lengths",
    "image_features",
    "log1p",
    "median_complete",
    "moran",
    "neighbor_table",
    "select_genes",
    "spared_pipeline",
    "spatial_graph",
    "split_by",
    "tpm",
]
