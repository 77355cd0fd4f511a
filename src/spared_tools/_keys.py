"""Every ``obs`` / ``var`` / ``layers`` / ``obsm`` / ``obsp`` / ``uns`` key name used by the package, in one place.

Keys are grouped by the AnnData slot they name (squidpy's ``_constants._pkg_constants.Key`` does the same)::

    Key.obs.slide           # "slide_id", the library key
    Key.layers.log1p        # "log1p"
    Key.obsm.image_features # "X_image_features"
    Key.uns.spackle         # "spackle"
    Key.obsp.connectivities # "spatial_connectivities"

Every value is a plain ``str``. The flat names of the first version (``Key.SLIDE``, ``Key.LOG``,
``Key.SPACKLE``, ...) are kept as aliases of the nested ones, so ``Key.SLIDE is Key.obs.slide``.
"""

from __future__ import annotations

__all__ = ["Key"]


class _Slot:
    """One slot's key names (class attributes holding ``str``)."""

    @classmethod
    def names(cls) -> dict[str, str]:
        """Attribute name → key for every key of this slot."""
        return {k: v for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, str)}


class _Obs(_Slot):
    """``adata.obs`` columns."""

    slide = "slide_id"  #: library key: one value per slide / section
    patient = "patient"
    array_row = "array_row"
    array_col = "array_col"
    in_tissue = "in_tissue"
    pxl_row = "pxl_row_in_fullres"
    pxl_col = "pxl_col_in_fullres"
    split = "split"  #: values :attr:`_Split.train` / ``val`` / ``test``


class _Split(_Slot):
    """The values of the ``obs[Key.obs.split]`` column."""

    train = "train"
    val = "val"
    test = "test"


class _Layers(_Slot):
    """``adata.layers`` written by the SpaRED pipeline and the tools."""

    counts = "counts"  #: raw copy of the counts
    tpm = "tpm"
    log1p = "log1p"  #: log2(TPM + 1)
    median = "median"  #: median-completed log layer
    combat = "combat"
    deltas = "deltas"
    mask = "mask"  #: bool: True where the raw count was > 0 ("real" entries)
    spackle = "spackle"  #: SpaCKLE-completed layer
    genequery = "genequery"  #: GeneQuery predictions


class _Var(_Slot):
    """``adata.var`` columns."""

    moran_I = "moran_I"
    moran_pval = "moran_pval_norm"
    moran_fdr = "moran_pval_norm_fdr_bh"
    exp_frac = "exp_frac"
    glob_exp_frac = "glob_exp_frac"
    gene_length = "gene_length"
    has_gene_length = "has_gene_length"
    selected = "spared_selected"
    train_mean = "train_mean"


class _Varm(_Slot):
    """``adata.varm`` entries."""

    moran_I_per_slide = "moran_I_per_slide"  #: DataFrame, one column per slide


class _Obsm(_Slot):
    """``adata.obsm`` entries."""

    spatial = "spatial"  #: [x, y] full-resolution pixels
    patches = "patches"  #: H&E patches, (n_obs, size, size, 3) uint8
    image_features = "X_image_features"  #: frozen image-encoder features, (n_obs, dim)
    image_views = "X_image_views"  #: features of the 8 dihedral views, (n_obs, 8, dim)
    genequery_unseen = "genequery_unseen"  #: GeneQuery predictions of genes not in var_names


class _Obsp(_Slot):
    """``adata.obsp`` graphs (squidpy names)."""

    graph = "spatial"  #: prefix of the graph keys
    connectivities = "spatial_connectivities"
    distances = "spatial_distances"


class _Uns(_Slot):
    """``adata.uns`` entries (each tool records its ``["params"]`` under its own)."""

    spatial = "spatial"  #: ``uns[spatial][library_id]`` = images, scale factors
    spatial_neighbors = "spatial_neighbors"
    pipeline = "spared"
    filter = "filter_spared"
    tpm = "tpm"
    log1p = "log1p"  #: scanpy's ``{"base": ...}`` of log-transformed data
    median = "median_complete"
    moran = "moran"
    combat = "combat"
    deltas = "deltas"
    patches = "patches"
    image_features = "X_image_features"
    image_views = "X_image_views"
    spackle = "spackle"
    spackle_evaluation = "spackle_evaluation"
    genequery = "genequery"
    dataset = "spared_dataset"  #: registry entry of a dataset loaded by :mod:`spared_tools.datasets`
    example = "example"  #: provenance of the bundled example


class _Evaluation(_Slot):
    """Columns of the per-gene table of :func:`spared_tools.tl.evaluate_prediction` (``["per_gene"]``)."""

    pcc = "pcc"
    model = "model"  #: the model column of a long table of several models
    heg = "heg"
    hvg = "hvg"


class Key:
    """Default key names, by slot (scanpy/squidpy-compatible where a convention exists).

    ``Key.obs``, ``Key.split``, ``Key.layers``, ``Key.var``, ``Key.varm``, ``Key.obsm``, ``Key.obsp``,
    ``Key.uns`` and ``Key.evaluation`` hold the names; the upper-case attributes are the flat aliases of
    the first version, kept working.
    """

    obs = _Obs
    split = _Split
    layers = _Layers
    var = _Var
    varm = _Varm
    obsm = _Obsm
    obsp = _Obsp
    uns = _Uns
    evaluation = _Evaluation

    # flat aliases (the first version's names)
    SLIDE = _Obs.slide
    PATIENT = _Obs.patient
    ARRAY_ROW = _Obs.array_row
    ARRAY_COL = _Obs.array_col
    IN_TISSUE = _Obs.in_tissue
    PXL_ROW = _Obs.pxl_row
    PXL_COL = _Obs.pxl_col
    SPLIT = _Obs.split
    TRAIN, VAL, TEST = _Split.train, _Split.val, _Split.test
    SPATIAL = _Obsm.spatial  # obsm[SPATIAL] = [x, y]; uns[SPATIAL][library_id] = images etc.
    GRAPH = (
        _Obsp.graph
    )  # -> obsp["spatial_connectivities"], obsp["spatial_distances"], uns["spatial_neighbors"]
    COUNTS = _Layers.counts
    TPM = _Layers.tpm
    LOG = _Layers.log1p
    MEDIAN = _Layers.median
    COMBAT = _Layers.combat
    DELTAS = _Layers.deltas
    MASK = _Layers.mask
    MORAN_I = _Var.moran_I
    MORAN_PVAL = _Var.moran_pval
    MORAN_FDR = _Var.moran_fdr
    EXP_FRAC = _Var.exp_frac
    GLOB_EXP_FRAC = _Var.glob_exp_frac
    GENE_LENGTH = _Var.gene_length
    SELECTED = _Var.selected
    TRAIN_MEAN = _Var.train_mean
    PIPELINE = _Uns.pipeline
    SPACKLE = _Uns.spackle
    GENEQUERY = _Uns.genequery
    PATCHES = _Obsm.patches
    IMAGE_FEATURES = _Obsm.image_features

    @staticmethod
    def connectivities(key: str = "spatial") -> str:
        """``obsp`` key of the connectivities of graph ``key``."""
        return f"{key}_connectivities"

    @staticmethod
    def distances(key: str = "spatial") -> str:
        """``obsp`` key of the distances of graph ``key``."""
        return f"{key}_distances"

    @staticmethod
    def neighbors_uns(key: str = "spatial") -> str:
        """``uns`` key of the parameters of graph ``key``."""
        return f"{key}_neighbors"

    @classmethod
    def slots(cls) -> dict[str, type[_Slot]]:
        """Slot name → its names, e.g. ``{"obs": Key.obs, ...}``."""
        return {k: v for k, v in vars(cls).items() if isinstance(v, type) and issubclass(v, _Slot)}

    @classmethod
    def values(cls) -> frozenset[str]:
        """Every key name of every slot (what a default key must be one of)."""
        return frozenset(v for slot in cls.slots().values() for v in slot.names().values())
