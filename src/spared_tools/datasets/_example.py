"""The small real data set bundled with the package: :func:`example`."""

from __future__ import annotations

import copy
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools.io._image import LOWRES_MAX_SIDE, downscale_array, read_image
from spared_tools.io._utils import to_count_matrix

_DATA = "spared_tools._data"
_H5AD = "example_mob.h5ad"
#: Assumed physical size of one ST 2k grid unit (spot diameter), as stated by the source conversion.
_ST2K_GRID_UNIT_UM = 100.0


def _data_path(name: str) -> Path:
    path = Path(str(files(_DATA).joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(
            f"The bundled example file {name} is missing from {path.parent}; reinstall spared-tools "
            "(or run scripts/build_example.py in a source checkout)."
        )
    return path


def example(*, images: bool = True, dtype: str = "float32") -> AnnData:
    """Two sections of mouse olfactory bulb, legacy ST 2k array, bundled with the package (~1.7 MB).

    Sections MOB1 and MOB2 of the STUtility example data (Bergenstråhle et al., BMC Genomics 2020;
    github.com/jbergenstrahle/STUtility @ 9a8f421, ``inst/extdata``), MIT licence (full text and
    provenance in ``spared_tools/_data/EXAMPLE_LICENSE``; also recorded in ``uns['example']``).
    786 spots x 1,000 genes (Ensembl ids, a subset chosen by the source), raw counts as published.
    The spots sit on a checkerboard lattice (``array_row + array_col`` even): use
    ``geometry="checkerboard"`` for lattice graphs. The image (1905 x 1905 px) is the pixel space of the
    spot coordinates, so ``tissue_hires_scalef`` is 1; the spot diameter is one grid unit (~22.8 px),
    which the source conversion assumes to be 100 µm.

    Parameters
    ----------
    images
        Attach each section's image as ``uns['spatial'][slide]['images']['hires']`` (and a 600 px
        ``lowres`` copy).
    dtype
        Data type of the CSR count matrix ``X`` (``"float32"``, ``"float64"``, ``"int32"`` or ``"int64"``).

    Returns
    -------
    AnnData with

    ``X``
        Raw integer counts (CSR), exactly as published.
    ``obs['slide_id']``
        Categorical, ``"MOB1"`` / ``"MOB2"``.
    ``obs['array_row']``, ``obs['array_col']``
        Integer ST array coordinates (``y`` / ``x`` of the source's ``<x>x<y>`` spot ids).
    ``obs['array_row_adj']``, ``obs['array_col_adj']``
        The source's sub-grid adjusted coordinates.
    ``obs['pxl_row_in_fullres']``, ``obs['pxl_col_in_fullres']``, ``obs['in_tissue']``
        Pixel position of the spot centre and the tissue flag (all 1).
    ``var_names``, ``var['gene_symbol']``
        Versioned Ensembl gene ids as published; mouse gene symbols from GENCODE vM33 (empty string for
        the few ids GENCODE vM33 no longer lists).
    ``obsm['spatial']``
        ``float64`` ``[x, y]`` spot centres in image pixels.
    ``uns['spatial'][slide]``
        ``images`` (``hires`` ``uint8`` 1905 x 1905 x 3 and ``lowres``), ``scalefactors``
        (``spot_diameter_fullres``, ``tissue_hires_scalef`` = 1, ``tissue_lowres_scalef``,
        ``microns_per_pixel`` under the 100 µm assumption) and ``metadata`` (source files, organism).
    ``uns['example']``
        Provenance: source repository and commit, licence, how symbols were added, checksum.

    Examples
    --------
    >>> import spared_tools as sp
    >>> adata = sp.datasets.example()
    >>> adata.shape
    (786, 1000)
    """
    import anndata as ad

    adata = ad.read_h5ad(_data_path(_H5AD))
    adata.X = to_count_matrix(adata.X, dtype, where="the bundled example")
    adata.obs[Key.SLIDE] = pd.Categorical(adata.obs[Key.SLIDE].astype(str), categories=["MOB1", "MOB2"])
    for c in (Key.ARRAY_ROW, Key.ARRAY_COL, Key.IN_TISSUE):
        adata.obs[c] = adata.obs[c].to_numpy(np.int64)
    prov = dict(adata.uns.pop("example_provenance"))
    spatial = copy.deepcopy(dict(adata.uns[Key.SPATIAL]))
    for sid, lib in spatial.items():
        lib = dict(lib)
        sf = dict(lib["scalefactors"])
        sf["microns_per_pixel"] = _ST2K_GRID_UNIT_UM / float(sf["spot_diameter_fullres"])
        lib["images"] = {}
        if images:
            hires = read_image(_data_path(f"example_mob_{sid}.jpg"))
            lowres_scalef = min(1.0, LOWRES_MAX_SIDE / max(hires.shape[:2]))
            lib["images"] = {"hires": hires, "lowres": downscale_array(hires, lowres_scalef)}
            sf["tissue_lowres_scalef"] = lowres_scalef
        lib["scalefactors"] = sf
        spatial[sid] = lib
    adata.uns[Key.SPATIAL] = spatial
    adata.uns["example"] = prov
    return adata
