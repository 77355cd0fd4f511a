"""Every ``obs`` / ``var`` / ``layers`` / ``obsm`` / ``obsp`` / ``uns`` key name used by the package, in one place."""

from __future__ import annotations


class Key:
    """Default key names (scanpy/squidpy-compatible where a convention exists)."""

    # obs
    SLIDE = "slide_id"  # library key: one value per slide / section
    PATIENT = "patient"
    ARRAY_ROW = "array_row"
    ARRAY_COL = "array_col"
    IN_TISSUE = "in_tissue"
    PXL_ROW = "pxl_row_in_fullres"
    PXL_COL = "pxl_col_in_fullres"
    SPLIT = "split"  # values "train" / "val" / "test"
    TRAIN, VAL, TEST = "train", "val", "test"

    # obsm / uns
    SPATIAL = (
        "spatial"  # obsm[SPATIAL] = [x, y] full-resolution pixels; uns[SPATIAL][library_id] = images etc.
    )

    # obsp (squidpy-compatible)
    GRAPH = (
        "spatial"  # -> obsp["spatial_connectivities"], obsp["spatial_distances"], uns["spatial_neighbors"]
    )

    # layers written by the SpaRED pipeline
    COUNTS = "counts"
    TPM = "tpm"
    LOG = "log1p"
    MEDIAN = "median"  # median-completed log layer
    COMBAT = "combat"
    DELTAS = "deltas"
    MASK = "mask"  # bool: True where the raw count was > 0 ("real" entries)

    # var
    MORAN_I = "moran_I"
    MORAN_PVAL = "moran_pval_norm"
    MORAN_FDR = "moran_pval_norm_fdr_bh"
    EXP_FRAC = "exp_frac"
    GLOB_EXP_FRAC = "glob_exp_frac"
    GENE_LENGTH = "gene_length"
    SELECTED = "spared_selected"
    TRAIN_MEAN = "train_mean"

    # uns
    PIPELINE = "spared"
    SPACKLE = "spackle"
    GENEQUERY = "genequery"

    @staticmethod
    def connectivities(key: str = "spatial") -> str:
        return f"{key}_connectivities"

    @staticmethod
    def distances(key: str = "spatial") -> str:
        return f"{key}_distances"

    @staticmethod
    def neighbors_uns(key: str = "spatial") -> str:
        return f"{key}_neighbors"
