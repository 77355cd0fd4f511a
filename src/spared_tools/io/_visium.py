"""Reader for 10x Genomics Space Ranger ``outs/`` folders: :func:`read_visium`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger

from ._image import image_size, read_image
from ._utils import check_counts, open_text, reading, require_file, to_count_matrix

#: Diameter of a Visium spot in µm (10x Genomics specification).
VISIUM_SPOT_DIAMETER_UM = 55.0

_POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]


def _decode(values) -> np.ndarray:
    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _read_h5(path: Path) -> tuple[sp.csr_matrix, np.ndarray, pd.DataFrame, dict]:
    """Read a Cell/Space Ranger v3+ HDF5 feature-barcode matrix as ``(X barcodes x features, barcodes, var, attrs)``."""
    with reading(path, "Count matrix"):
        return _read_h5_file(path)


def _read_h5_file(path: Path) -> tuple[sp.csr_matrix, np.ndarray, pd.DataFrame, dict]:
    import h5py

    with h5py.File(path, "r") as f:
        if "matrix" not in f:
            raise ValueError(
                f"{path} has no 'matrix' group: not a Space Ranger feature-barcode matrix (v3 format), or a "
                "legacy Cell Ranger 2 file, which read_visium does not support."
            )
        m = f["matrix"]
        missing = [k for k in ("data", "indices", "indptr", "shape", "barcodes", "features") if k not in m]
        if missing:
            raise ValueError(f"{path}: the 'matrix' group lacks {missing}.")
        n_features, n_barcodes = (int(v) for v in m["shape"][()])
        data = m["data"][()]
        indices = m["indices"][()]
        indptr = m["indptr"][()]
        if len(indptr) != n_barcodes + 1:
            raise ValueError(f"{path}: indptr has {len(indptr)} entries for {n_barcodes} barcodes.")
        X = sp.csr_matrix((data, indices, indptr), shape=(n_barcodes, n_features))
        barcodes = _decode(m["barcodes"][()])
        feats = m["features"]
        var = pd.DataFrame(
            {
                "gene_ids": _decode(feats["id"][()]),
                "gene_symbols": _decode(feats["name"][()]),
                "feature_types": _decode(feats["feature_type"][()])
                if "feature_type" in feats
                else np.full(n_features, "Gene Expression", dtype=object),
            }
        )
        if "genome" in feats:
            var["genome"] = _decode(feats["genome"][()])
        attrs = {}
        for k, v in f.attrs.items():
            if isinstance(v, bytes):
                v = v.decode("utf-8")
            elif isinstance(v, np.ndarray):
                v = [x.decode("utf-8") if isinstance(x, bytes) else x for x in v.tolist()]
                if len(v) == 1 and k != "library_ids":
                    v = v[0]
            attrs[k] = v
    return X, barcodes, var, attrs


def _find(folder: Path, stems: list[str]) -> Path | None:
    for stem in stems:
        for suffix in ("", ".gz"):
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


def _read_mtx(folder: Path) -> tuple[sp.csr_matrix, np.ndarray, pd.DataFrame, dict]:
    """Read a ``*_feature_bc_matrix/`` folder (``matrix.mtx``, ``features.tsv``/``genes.tsv``, ``barcodes.tsv``)."""
    mtx = _find(folder, ["matrix.mtx"])
    feats = _find(folder, ["features.tsv", "genes.tsv"])
    bcs = _find(folder, ["barcodes.tsv"])
    if mtx is None or feats is None or bcs is None:
        absent = [
            n
            for n, p in (("matrix.mtx[.gz]", mtx), ("features.tsv[.gz]", feats), ("barcodes.tsv[.gz]", bcs))
            if p is None
        ]
        raise FileNotFoundError(f"Count matrix folder {folder} has no {', '.join(absent)}.")
    return _read_mtx_files(mtx, feats, bcs)


def _read_mtx_files(
    mtx: Path, feats: Path, bcs: Path
) -> tuple[sp.csr_matrix, np.ndarray, pd.DataFrame, dict]:
    from scipy.io import mmread

    attrs: dict = {}
    with reading(mtx, "Matrix Market file"), open_text(mtx) as fh:
        for _ in range(3):
            line = fh.readline()
            if line.startswith("%metadata_json:"):
                try:
                    attrs = json.loads(line.split(":", 1)[1])
                except json.JSONDecodeError:
                    attrs = {}
    with reading(mtx, "Matrix Market file"):
        M = mmread(str(mtx))
    X = sp.csr_matrix(sp.coo_matrix(M).T)
    with reading(feats, "Feature file"):
        f = pd.read_csv(feats, sep="\t", header=None, dtype=str, keep_default_na=False)
    var = pd.DataFrame(
        {"gene_ids": f[0].to_numpy(object), "gene_symbols": f[1 if f.shape[1] > 1 else 0].to_numpy(object)}
    )
    var["feature_types"] = f[2].to_numpy(object) if f.shape[1] > 2 else "Gene Expression"
    with reading(bcs, "Barcode file"):
        bc_table = pd.read_csv(bcs, sep="\t", header=None, dtype=str, keep_default_na=False)
    barcodes = bc_table[0].to_numpy(object)
    if X.shape != (len(barcodes), len(var)):
        raise ValueError(
            f"{mtx} is {M.shape[0]} features x {M.shape[1]} barcodes but {feats.name} lists {len(var)} features "
            f"and {bcs.name} {len(barcodes)} barcodes."
        )
    return X, barcodes, var, attrs


def _read_positions(spatial: Path) -> tuple[pd.DataFrame, Path]:
    """Read ``tissue_positions.csv`` (Space Ranger >= 2, header), ``tissue_positions_list.csv`` (1.x) or ``.parquet``."""
    p2, p1, pq = (
        spatial / n for n in ("tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet")
    )
    if p2.is_file():
        with reading(p2, "Spot position file"):
            pos, path = pd.read_csv(p2, dtype={"barcode": str}), p2
    elif p1.is_file():
        with reading(p1, "Spot position file"):
            pos, path = pd.read_csv(p1, header=None, names=_POSITION_COLUMNS, dtype={"barcode": str}), p1
    elif pq.is_file():
        with reading(pq, "Spot position file"):
            pos, path = pd.read_parquet(pq), pq
    else:
        raise FileNotFoundError(
            f"No spot positions in {spatial}: expected tissue_positions.csv (Space Ranger >= 2.0) or "
            "tissue_positions_list.csv (Space Ranger 1.x)."
        )
    missing = [c for c in _POSITION_COLUMNS if c not in pos.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; found {list(pos.columns)}.")
    if pos["barcode"].duplicated().any():
        raise ValueError(f"{path} lists {int(pos['barcode'].duplicated().sum())} barcodes more than once.")
    for c in _POSITION_COLUMNS[1:]:
        if not np.issubdtype(pos[c].dtype, np.number) or pos[c].isna().any():
            raise ValueError(f"{path}: column {c!r} must be numeric without missing values.")
    return pos.set_index("barcode"), path


def read_visium(
    path: str | Path,
    *,
    count_file: str | Path | None = None,
    library_id: str | None = None,
    load_images: bool = True,
    fullres_image_path: str | Path | None = None,
    var_names: Literal["gene_symbols", "gene_ids"] = "gene_symbols",
    gex_only: bool = True,
    dtype: str = "float32",
) -> AnnData:
    """Read a 10x Genomics Visium Space Ranger output folder.

    Supports the Space Ranger 1.x layout (``spatial/tissue_positions_list.csv`` without header) and the
    2.x/3.x layout (``spatial/tissue_positions.csv`` with header), with counts from the HDF5 matrix
    (``filtered_feature_bc_matrix.h5``) or the Matrix Market folder (``filtered_feature_bc_matrix/``
    with ``matrix.mtx.gz``, ``features.tsv.gz``, ``barcodes.tsv.gz``). The result follows the
    scanpy/squidpy layout, so ``sc.pl.spatial`` and ``squidpy`` functions work on it.

    Every barcode of the count matrix keeps its order; none is dropped (a raw matrix keeps the spots
    outside the tissue, flagged by ``obs['in_tissue'] == 0``).

    Parameters
    ----------
    path
        The Space Ranger ``outs/`` folder (holding the count matrix and ``spatial/``).
    count_file
        Count matrix, relative to ``path`` or absolute: an ``.h5`` file or a Matrix Market folder. By
        default ``filtered_feature_bc_matrix.h5`` when present, else ``filtered_feature_bc_matrix/``.
    library_id
        Slide identifier for ``obs['slide_id']`` and the ``uns['spatial']`` key. Defaults to the HDF5
        file's ``library_ids`` attribute, else the folder name (its parent's when it is ``outs``).
    load_images
        Load ``spatial/tissue_hires_image.png`` and ``spatial/tissue_lowres_image.png`` when present.
    fullres_image_path
        Optional full-resolution microscope image. It is not loaded (it can exceed 20k x 20k px); its
        path and size are recorded in ``metadata['fullres_path']`` / ``['source_image_path']``.
    var_names
        Use gene symbols (made unique with ``-1``, ``-2``, ... suffixes, as in scanpy) or Ensembl ids
        as ``var_names``; both are kept as ``var`` columns.
    gex_only
        Keep only ``Gene Expression`` features (drop antibody captures etc.).
    dtype
        Data type of the CSR count matrix ``X`` (``"float32"``, ``"float64"``, ``"int32"``, ``"int64"``);
        the values are the file's integers exactly.

    Returns
    -------
    AnnData with

    ``X``
        Raw UMI counts, CSR, barcodes x features, in the count file's order.
    ``obs['slide_id']``
        Categorical, ``library_id``.
    ``obs['in_tissue']``, ``obs['array_row']``, ``obs['array_col']``
        Integers from the positions file (``array_row``/``array_col`` on the hexagonal Visium grid).
    ``obs['pxl_row_in_fullres']``, ``obs['pxl_col_in_fullres']``
        Spot centres in full-resolution pixels.
    ``var``
        ``gene_ids``, ``gene_symbols``, ``feature_types`` and ``genome`` (when the file has it).
    ``obsm['spatial']``
        ``float64`` ``[x, y]`` = ``[pxl_col_in_fullres, pxl_row_in_fullres]``.
    ``uns['spatial'][library_id]``
        ``images`` (``hires``/``lowres`` ``uint8`` H x W x 3, those present), ``scalefactors`` (the
        Space Ranger JSON plus ``microns_per_pixel`` = 55 µm / ``spot_diameter_fullres``) and
        ``metadata`` (``chemistry_description``, ``software_version``, file paths, ``fullres_path``).

    Examples
    --------
    >>> import spared_tools as sp
    >>> adata = sp.io.read_visium("path/to/outs")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Space Ranger output folder not found: {path}")
    path = path.resolve()
    if var_names not in ("gene_symbols", "gene_ids"):
        raise ValueError(f"var_names must be 'gene_symbols' or 'gene_ids', got {var_names!r}.")
    if count_file is None:
        if (path / "filtered_feature_bc_matrix.h5").is_file():
            counts = path / "filtered_feature_bc_matrix.h5"
        elif (path / "filtered_feature_bc_matrix").is_dir():
            counts = path / "filtered_feature_bc_matrix"
        else:
            raise FileNotFoundError(
                f"No count matrix in {path}: expected filtered_feature_bc_matrix.h5 or the folder "
                "filtered_feature_bc_matrix/ (pass count_file= for another name)."
            )
    else:
        counts = path / count_file if not Path(count_file).is_absolute() else Path(count_file)
        if not counts.exists():
            raise FileNotFoundError(f"Count matrix not found: {counts}")
    X, barcodes, var, attrs = _read_mtx(counts) if counts.is_dir() else _read_h5(counts)
    check_counts(X, where=str(counts))
    if pd.Index(barcodes).has_duplicates:
        raise ValueError(
            f"{counts} lists {int(pd.Index(barcodes).duplicated().sum())} barcodes more than once."
        )

    if gex_only:
        keep = (var["feature_types"] == "Gene Expression").to_numpy()
        if not keep.any():
            raise ValueError(f"{counts} has no 'Gene Expression' features; pass gex_only=False.")
        if not keep.all():
            logger.info(f"read_visium: kept {int(keep.sum())} Gene Expression features of {len(var)}.")
            X = X[:, np.flatnonzero(keep)]
            var = var.loc[keep]
    var.index = pd.Index(var[var_names].astype(str).to_numpy())
    if var.index.has_duplicates:
        from anndata.utils import make_index_unique

        n_dup = int(var.index.duplicated().sum())
        var.index = make_index_unique(var.index)
        logger.info(f"read_visium: {n_dup} duplicated {var_names} made unique by appending '-1', '-2', ...")

    spatial_dir = path / "spatial"
    if not spatial_dir.is_dir():
        raise FileNotFoundError(
            f"No 'spatial' folder in {path}; it holds the spot positions and scalefactors."
        )
    pos, pos_path = _read_positions(spatial_dir)
    missing = ~pd.Index(barcodes).isin(pos.index)
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} barcodes of {counts} (e.g. {list(barcodes[missing][:3])}) have no row in "
            f"{pos_path}; are the two files from the same run?"
        )
    pos = pos.loc[barcodes]
    sf_path = require_file(spatial_dir / "scalefactors_json.json", "Scale factor file")
    with reading(sf_path, "Scale factor file"), open(sf_path, encoding="utf-8") as fh:
        scalefactors = {k: float(v) if isinstance(v, int | float) else v for k, v in json.load(fh).items()}
    if "spot_diameter_fullres" not in scalefactors:
        raise ValueError(f"{sf_path} has no 'spot_diameter_fullres'.")
    scalefactors["microns_per_pixel"] = VISIUM_SPOT_DIAMETER_UM / scalefactors["spot_diameter_fullres"]

    if library_id is None:
        libs = attrs.get("library_ids")
        if isinstance(libs, list) and len(libs) == 1:
            library_id = str(libs[0])
        else:
            library_id = path.parent.name if path.name == "outs" else path.name
    library_id = str(library_id)

    images: dict[str, np.ndarray] = {}
    if load_images:
        for res in ("hires", "lowres"):
            img = spatial_dir / f"tissue_{res}_image.png"
            if img.is_file():
                images[res] = read_image(img)
        if not images:
            logger.info(f"read_visium: no tissue_hires_image.png / tissue_lowres_image.png in {spatial_dir}.")
    metadata: dict[str, object] = {
        "platform": "10x Visium",
        "counts_path": str(counts),
        "positions_path": str(pos_path),
        "scalefactors_path": str(sf_path),
        "spot_diameter_um": VISIUM_SPOT_DIAMETER_UM,
    }
    for key in ("chemistry_description", "software_version"):
        if key in attrs:
            metadata[key] = str(attrs[key])
    if fullres_image_path is not None:
        full = require_file(fullres_image_path, "Full-resolution image").resolve()
        width, height = image_size(full)
        metadata.update(
            {
                "fullres_path": str(full),
                "source_image_path": str(full),
                "fullres_width": width,
                "fullres_height": height,
            }
        )

    obs = pd.DataFrame(index=pd.Index(barcodes.astype(str)))
    obs[Key.SLIDE] = pd.Categorical([library_id] * len(obs))
    for c in (Key.IN_TISSUE, Key.ARRAY_ROW, Key.ARRAY_COL):
        obs[c] = pos[c].to_numpy().astype(np.int64)
    obs[Key.PXL_ROW] = pos["pxl_row_in_fullres"].to_numpy(np.float64)
    obs[Key.PXL_COL] = pos["pxl_col_in_fullres"].to_numpy(np.float64)

    adata = AnnData(X=to_count_matrix(X, dtype, where=str(counts)), obs=obs, var=var)
    adata.obsm[Key.SPATIAL] = np.column_stack([obs[Key.PXL_COL].to_numpy(), obs[Key.PXL_ROW].to_numpy()])
    adata.uns[Key.SPATIAL] = {
        library_id: {"images": images, "scalefactors": scalefactors, "metadata": metadata}
    }
    return adata
