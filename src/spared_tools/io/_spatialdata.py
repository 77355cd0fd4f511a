"""SpatialData in and out: :func:`from_spatialdata` and :func:`to_spatialdata`.

``spatialdata`` is an optional dependency (``pip install 'spared-tools[spatialdata]'``); it is imported only
inside these functions, so ``import spared_tools`` works without it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger

from ._visium import VISIUM_SPOT_DIAMETER_UM

#: ``uns`` key where :func:`from_spatialdata` records where the table came from (used by ``to_spatialdata``).
UNS_KEY = "spatialdata"
_BIN_UM = re.compile(r"(\d+(?:\.\d+)?)\s*um", re.IGNORECASE)


def _import_spatialdata():
    try:
        import spatialdata
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "SpatialData support needs the optional extra: pip install 'spared-tools[spatialdata]' "
            "(spatialdata and spatialdata-io)."
        ) from err
    return spatialdata


def _affine_xy(element: Any, coordinate_system: str) -> np.ndarray:
    """The 3 x 3 affine matrix mapping an element's intrinsic ``(x, y)`` to ``coordinate_system``."""
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=coordinate_system)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=np.float64)


def _coordinate_systems(element: Any) -> dict[str, Any]:
    from spatialdata.transformations import get_transformation

    return dict(get_transformation(element, get_all=True))


def _pick_coordinate_system(shapes: Any, region: str, requested: str | None) -> str:
    """The requested system, else the one where the shapes sit untransformed (full-resolution pixels)."""
    from spatialdata.transformations import Identity

    systems = _coordinate_systems(shapes)
    if requested is not None:
        if requested not in systems:
            raise KeyError(
                f"Shapes {region!r} have no transformation to coordinate system {requested!r}; "
                f"available: {sorted(systems)}."
            )
        return requested
    for name, t in systems.items():
        if isinstance(t, Identity):
            return name
    return next(iter(systems))


def _image_array(image: Any) -> np.ndarray:
    """A 2D image element (single or multi-scale) as a ``uint8``/float ``(H, W, 3)`` NumPy array."""
    import spatialdata
    import xarray as xr

    # a multi-scale image (DataTree): its full-resolution level
    level = image if isinstance(image, xr.DataArray) else spatialdata.get_pyramid_levels(image, n=0)
    arr = np.asarray(level.transpose("y", "x", "c").data)
    if arr.shape[2] == 4:  # RGBA (spatialdata-io keeps the alpha channel): drop alpha
        arr = arr[:, :, :3]
    elif arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def _images_for(
    sdata: Any, coordinate_system: str, names: Sequence[str] | None, region: str
) -> dict[str, tuple[np.ndarray, float]]:
    """``{"hires"/"lowres"/name: (array, scalef)}`` of the images in ``coordinate_system``.

    ``scalef`` maps coordinate-system units (full-resolution pixels) to image pixels; only images whose
    transformation to the system is a pure, isotropic scale can be expressed that way (others are logged
    and skipped).
    """
    found: list[tuple[str, Any, float]] = []
    candidates = list(sdata.images) if names is None else list(names)
    for name in candidates:
        if name not in sdata.images:
            raise KeyError(f"sdata.images has no {name!r}; available: {sorted(sdata.images)}.")
        img = sdata.images[name]
        if coordinate_system not in _coordinate_systems(img):
            if names is not None:
                raise ValueError(
                    f"Image {name!r} has no transformation to coordinate system {coordinate_system!r} of "
                    f"region {region!r}; it cannot be placed under the spots."
                )
            continue
        m = _affine_xy(img, coordinate_system)
        sx, sy = m[0, 0], m[1, 1]
        if abs(m[0, 1]) > 1e-12 or abs(m[1, 0]) > 1e-12 or abs(m[0, 2]) > 1e-9 or abs(m[1, 2]) > 1e-9:
            logger.warning(
                "from_spatialdata: image %r is rotated or translated in %r; AnnData scale factors cannot "
                "express that, so it is not attached.",
                name,
                coordinate_system,
            )
            continue
        if not np.isclose(sx, sy, rtol=1e-6):
            logger.warning("from_spatialdata: image %r is scaled anisotropically; not attached.", name)
            continue
        found.append((name, img, 1.0 / float(sx)))
    out: dict[str, tuple[np.ndarray, float]] = {}
    # name images the way scanpy/squidpy expect: hires / lowres by name, else by size (largest = hires)
    found.sort(key=lambda t: -t[2])
    for name, img, scalef in found:
        low = name.lower()
        key = "hires" if "hires" in low else "lowres" if "lowres" in low else None
        if key is None or key in out:
            key = next((k for k in ("hires", "lowres") if k not in out), name)
        out[key] = (_image_array(img), scalef)
    return out


def _geometry_kind(gdf: Any) -> str:
    types = set(gdf.geometry.geom_type.unique())
    if types <= {"Point"}:
        return "circle"
    if types <= {"Polygon", "MultiPolygon"}:
        return "polygon"
    raise ValueError(f"Unsupported shape types {sorted(types)}; expected circles (points) or polygons.")


def from_spatialdata(
    sdata: Any,
    *,
    table: str = "table",
    image: str | Sequence[str] | None = None,
    coordinate_system: str | None = None,
    library_key: str = Key.SLIDE,
    spot_diameter_um: float | None = None,
) -> AnnData:
    """The spots of a :class:`~spatialdata.SpatialData` table as an AnnData the rest of the package reads.

    The table's rows are matched to the shapes they annotate (``region``/``instance_key`` of the table);
    each region becomes one slide. For every region this writes what :func:`spared_tools.io.read_visium`
    writes: spot centres in ``obsm['spatial']`` (``[x, y]`` in the region's coordinate system, i.e.
    full-resolution pixels for ``spatialdata_io.visium``), the images of that coordinate system as
    ``uns['spatial'][region]['images']['hires'/'lowres']`` (``H x W x 3``, alpha dropped) with their
    ``tissue_<key>_scalef``, ``spot_diameter_fullres`` and ``microns_per_pixel``.

    Visium spots are circles (``radius``): the diameter is ``2 * radius`` and ``microns_per_pixel`` is
    55 µm over it. Visium HD bins (``spatialdata_io.visium_hd``, tables ``square_002um`` ...) are squares:
    the centre is the square's centroid, ``spot_diameter_fullres`` its side, ``microns_per_pixel`` the bin
    size in the table/shapes name (``"008um"`` → 8 µm) over the side, and the bins' integer
    ``array_row``/``array_col`` make a **square lattice** (4 neighbours; ``geometry="auto"`` detects it).
    Pass ``spot_diameter_um=`` for other shapes.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` (e.g. from ``spatialdata_io.visium`` or
        ``spatialdata.read_zarr``).
    table
        Name of the table in ``sdata.tables``.
    image
        Image element(s) to attach (``None``: every image in the region's coordinate system, named
        ``hires``/``lowres`` by their names or, failing that, by size).
    coordinate_system
        Coordinate system that defines pixel coordinates (``None``: the one in which the shapes are
        untransformed).
    library_key
        ``obs`` column that receives the region (slide) of every spot; an existing column is replaced only
        if it equals the regions.
    spot_diameter_um
        Physical size of a spot or bin in µm (``None``: 55 µm for circles, the size in the name for
        squares).

    Returns
    -------
    A new AnnData (the table's data copied; ``sdata`` is not modified) with ``X``, ``layers``, ``var``,
    ``obsm``, ``obsp`` and ``uns`` of the table, plus

    ``obs[library_key]``
        Categorical region (slide) of each spot. The table's region and instance columns are kept.
    ``obsm['spatial']``
        ``float64`` spot centres ``[x, y]``.
    ``uns['spatial'][region]``
        ``images``, ``scalefactors`` (``spot_diameter_fullres``, ``tissue_hires_scalef`` /
        ``tissue_lowres_scalef`` for the images found, both 1 when there is none, ``microns_per_pixel``
        when known) and ``metadata``.
    ``uns['spatialdata']``
        ``table``, ``region_key``, ``instance_key``, ``regions`` and ``coordinate_systems``, which
        :func:`to_spatialdata` uses to link results back to the same shapes.
    """
    spatialdata = _import_spatialdata()
    if not isinstance(sdata, spatialdata.SpatialData):
        raise TypeError(f"sdata must be a spatialdata.SpatialData, got {type(sdata).__name__}.")
    if table not in sdata.tables:
        raise KeyError(f"sdata has no table {table!r}; tables: {sorted(sdata.tables)}.")
    tab = sdata.tables[table]
    attrs = tab.uns.get("spatialdata_attrs", {})
    region_key, instance_key = attrs.get("region_key"), attrs.get("instance_key")
    if region_key is None or instance_key is None:
        raise ValueError(
            f"Table {table!r} does not annotate shapes (no region_key/instance_key in "
            "uns['spatialdata_attrs']); link it with spatialdata.models.TableModel.parse first."
        )
    names = None if image is None else ([image] if isinstance(image, str) else list(image))
    regions_col = tab.obs[region_key].astype(str).to_numpy()
    regions = list(dict.fromkeys(regions_col))
    xy = np.full((tab.n_obs, 2), np.nan, dtype=np.float64)
    spatial: dict[str, Any] = {}
    systems: dict[str, str] = {}
    for region in regions:
        if region not in sdata.shapes:
            raise KeyError(
                f"Table {table!r} annotates {region!r}, which is not a shapes element of sdata "
                f"(shapes: {sorted(sdata.shapes)}); labels/points regions are not supported."
            )
        gdf = sdata.shapes[region]
        cs = _pick_coordinate_system(gdf, region, coordinate_system)
        systems[region] = cs
        rows = np.flatnonzero(regions_col == region)
        ids = tab.obs[instance_key].to_numpy()[rows]
        pos = gdf.index.get_indexer(pd.Index(ids))
        if (pos < 0).any():
            raise ValueError(
                f"{int((pos < 0).sum())} rows of table {table!r} have {instance_key!r} values that are not "
                f"in shapes {region!r} (e.g. {ids[pos < 0][:3].tolist()})."
            )
        kind = _geometry_kind(gdf)
        size_um: float | None
        m = _affine_xy(gdf, cs)
        scale = float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))
        if kind == "circle":
            px = np.column_stack([gdf.geometry.x.to_numpy(), gdf.geometry.y.to_numpy()])
            if "radius" not in gdf.columns:
                raise ValueError(f"Shapes {region!r} are points without a 'radius' column.")
            diameter = 2.0 * float(np.median(gdf["radius"].to_numpy(dtype=np.float64))) * scale
            size_um = VISIUM_SPOT_DIAMETER_UM if spot_diameter_um is None else float(spot_diameter_um)
        else:
            cent = gdf.geometry.centroid
            px = np.column_stack([cent.x.to_numpy(), cent.y.to_numpy()])
            diameter = float(np.median(np.sqrt(gdf.geometry.area.to_numpy(dtype=np.float64)))) * scale
            size_um = spot_diameter_um
            if size_um is None:
                hit = _BIN_UM.search(region) or _BIN_UM.search(table)
                size_um = float(hit.group(1)) if hit else None
        px = px[pos]
        xy[rows] = px @ m[:2, :2].T + m[:2, 2]
        scalefactors: dict[str, float] = {"spot_diameter_fullres": diameter}
        if size_um is not None and diameter > 0:
            scalefactors["spot_diameter_um"] = float(size_um)
            scalefactors["microns_per_pixel"] = float(size_um) / diameter
        else:
            logger.info(
                "from_spatialdata: the physical size of the shapes of %r is unknown; pass spot_diameter_um= "
                "to record microns_per_pixel.",
                region,
            )
        images = {}
        for key, (arr, scalef) in _images_for(sdata, cs, names, region).items():
            images[key] = arr
            scalefactors[f"tissue_{key}_scalef"] = scalef
        if not images:  # as io.read_st for image-less sections: squidpy plots them with img=False
            scalefactors.update({"tissue_hires_scalef": 1.0, "tissue_lowres_scalef": 1.0})
        meta = copy.deepcopy((tab.uns.get(Key.SPATIAL) or {}).get(region, {}).get("metadata", {}))
        meta.update({"source": "spatialdata", "table": table, "shapes": region, "coordinate_system": cs})
        spatial[region] = {"images": images, "scalefactors": scalefactors, "metadata": meta}

    out = AnnData(
        X=tab.X.copy() if tab.X is not None else None,
        obs=tab.obs.copy(),
        var=tab.var.copy(),
        layers={k: v.copy() for k, v in tab.layers.items()},
        obsm={k: v.copy() for k, v in tab.obsm.items()},
        obsp={k: v.copy() for k, v in tab.obsp.items()},
        varm={k: v.copy() for k, v in tab.varm.items()},
        uns={k: copy.deepcopy(v) for k, v in tab.uns.items() if k not in ("spatialdata_attrs", Key.SPATIAL)},
    )
    if library_key in out.obs.columns and library_key != region_key:
        if not (out.obs[library_key].astype(str).to_numpy() == regions_col).all():
            raise ValueError(
                f"Table {table!r} already has an obs[{library_key!r}] column that differs from its regions "
                f"obs[{region_key!r}]; pass another library_key=."
            )
    out.obs[library_key] = pd.Categorical(regions_col, categories=regions)
    out.obsm[Key.SPATIAL] = xy
    out.uns[Key.SPATIAL] = spatial
    out.uns[UNS_KEY] = {
        "table": table,
        "region_key": region_key,
        "instance_key": instance_key,
        "regions": regions,
        "coordinate_systems": systems,
    }
    logger.info(f"from_spatialdata: table {table!r} -> {out.n_obs} spots x {out.n_vars} genes in {regions}.")
    return out


def _table_copy(adata: AnnData) -> AnnData:
    """The AnnData as a table: everything but the images (they live in ``sdata.images``)."""
    uns = {k: v for k, v in adata.uns.items() if k not in (Key.SPATIAL, UNS_KEY)}
    spatial = {}
    for lib, info in (adata.uns.get(Key.SPATIAL) or {}).items():
        if isinstance(info, dict):
            spatial[lib] = {k: v for k, v in info.items() if k != "images"}
    if spatial:
        uns[Key.SPATIAL] = spatial
    t = AnnData(
        X=adata.X,
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        layers=dict(adata.layers),
        obsm=dict(adata.obsm),
        obsp=dict(adata.obsp),
        varm=dict(adata.varm),
        uns=copy.deepcopy(uns),
    )
    return t.copy()


def _libraries(adata: AnnData, library_key: str | None) -> np.ndarray:
    if library_key is not None and library_key in adata.obs.columns:
        col = adata.obs[library_key]
        if col.isna().any():
            raise ValueError(f"adata.obs[{library_key!r}] has {int(col.isna().sum())} missing values.")
        return col.astype(str).to_numpy()
    libs = list(adata.uns.get(Key.SPATIAL) or {})
    if len(libs) > 1:
        raise KeyError(
            f"adata has {len(libs)} libraries in uns['spatial'] but no slide column {library_key!r}; pass "
            "library_key= naming the column that says which library each spot belongs to."
        )
    return np.full(adata.n_obs, libs[0] if libs else "spots", dtype=object).astype(str)


def to_spatialdata(
    adata: AnnData,
    sdata: Any = None,
    *,
    table: str = "spared",
    library_key: str | None = Key.SLIDE,
    overwrite: bool = False,
) -> Any:
    """Write an AnnData (results included) into a SpatialData as a table linked to the spots' shapes.

    With ``sdata`` given and ``adata`` coming from :func:`from_spatialdata` of it (its region and instance
    columns and ``uns['spatialdata']`` intact, as :func:`spared_tools.pp.spared_pipeline` keeps them), the
    new table annotates the **same** shapes, so spots filtered out by the pipeline are simply absent from
    it. Otherwise new elements are created per slide (``obs[library_key]``, or the single library of
    ``uns['spatial']``): circles ``"<slide>"`` at ``obsm['spatial']`` with radius
    ``spot_diameter_fullres / 2`` (half the smallest spot distance when unknown) and the images of
    ``uns['spatial'][slide]['images']`` as ``"<slide>_<key>_image"`` scaled by their
    ``tissue_<key>_scalef``, all in coordinate system ``"<slide>"`` (full-resolution pixels).

    The table holds ``X``, every layer (e.g. ``counts``, ``log1p``, ``median``, ``spackle``), ``obsm``
    (e.g. GeneQuery's unseen-gene predictions), ``obsp`` (``spatial_connectivities``/``_distances``),
    ``var``, ``varm`` and ``uns`` (parameters); images are not duplicated into it. ``sdata.write(path)``
    and ``spatialdata.read_zarr(path)`` round-trip it.

    Parameters
    ----------
    adata
        Spots with ``obsm['spatial']``.
    sdata
        SpatialData to add the table to (modified in place); ``None`` builds a new one.
    table
        Name of the new table.
    library_key
        ``obs`` column with the slide of each spot (``None``: one slide).
    overwrite
        Replace an existing table of that name.

    Returns
    -------
    The SpatialData (``sdata`` itself when given) with ``tables[table]`` (and, for a new object,
    ``shapes``/``images``).
    """
    spatialdata = _import_spatialdata()
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    if not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData object, got {type(adata).__name__}.")
    if sdata is not None and not isinstance(sdata, spatialdata.SpatialData):
        raise TypeError(f"sdata must be a spatialdata.SpatialData or None, got {type(sdata).__name__}.")
    if sdata is not None and table in sdata.tables and not overwrite:
        raise KeyError(f"sdata already has a table {table!r}; pass another table= or overwrite=True.")
    origin = adata.uns.get(UNS_KEY)
    t = _table_copy(adata)
    linked = (
        sdata is not None
        and isinstance(origin, dict)
        and origin.get("region_key") in adata.obs.columns
        and origin.get("instance_key") in adata.obs.columns
    )
    if linked:
        assert isinstance(origin, dict) and sdata is not None
        region_key, instance_key = str(origin["region_key"]), str(origin["instance_key"])
        present = list(dict.fromkeys(adata.obs[region_key].astype(str)))
        missing = [r for r in present if r not in sdata.shapes]
        if missing:
            raise KeyError(f"Regions {missing} of adata.obs[{region_key!r}] are not shapes of sdata.")
        t.obs[region_key] = pd.Categorical(adata.obs[region_key].astype(str), categories=present)
        t.obs[instance_key] = adata.obs[instance_key].to_numpy()
        sdata.tables[table] = TableModel.parse(
            t, region=present, region_key=region_key, instance_key=instance_key
        )
        logger.info(f"to_spatialdata: table {table!r} ({t.n_obs} x {t.n_vars}) annotates shapes {present}.")
        return sdata

    if Key.SPATIAL not in adata.obsm:
        raise KeyError("adata.obsm['spatial'] (spot centres [x, y]) is needed to place the spots.")
    xy = np.asarray(adata.obsm[Key.SPATIAL], dtype=np.float64)[:, :2]
    libs = _libraries(adata, library_key)
    order = list(dict.fromkeys(libs))
    taken = {*map(str, t.obs.columns), str(t.obs.index.name)}
    region_key = "region" if "region" not in taken else "spared_region"
    instance_key = "spot_id" if "spot_id" not in taken else "spared_spot_id"
    shapes: dict[str, Any] = {}
    images: dict[str, Any] = {}
    instance = np.zeros(adata.n_obs, dtype=np.int64)
    for lib in order:
        rows = np.flatnonzero(libs == lib)
        instance[rows] = np.arange(rows.size)
        info = (adata.uns.get(Key.SPATIAL) or {}).get(lib, {})
        sf = info.get("scalefactors", {}) if isinstance(info, dict) else {}
        if "spot_diameter_fullres" in sf:
            radius = float(sf["spot_diameter_fullres"]) / 2.0
        else:
            from scipy.spatial import cKDTree

            d, _ = cKDTree(xy[rows]).query(xy[rows], k=2) if rows.size > 1 else (np.ones((1, 2)), None)
            radius = float(np.min(d[:, 1])) / 2.0
            logger.info(
                "to_spatialdata: slide %r has no spot_diameter_fullres; radius = half the smallest spot "
                "distance (%.3g).",
                lib,
                radius,
            )
        name = spatialdata.sanitize_name(lib) if hasattr(spatialdata, "sanitize_name") else lib
        if sdata is not None and name in sdata.shapes:
            raise KeyError(
                f"sdata already has shapes {name!r} and adata was not read from it with from_spatialdata; "
                "pass sdata=None to build a new object."
            )
        gdf = ShapesModel.parse(
            xy[rows],
            geometry=0,
            radius=np.full(rows.size, radius),
            index=np.arange(rows.size),
            transformations={name: Identity()},
        )
        shapes[name] = gdf
        for key, arr in (info.get("images") or {}).items() if isinstance(info, dict) else []:
            scalef = sf.get(f"tissue_{key}_scalef")
            if scalef is None:
                logger.info("to_spatialdata: image %r of %r has no tissue_%s_scalef; skipped.", key, lib, key)
                continue
            arr = np.asarray(arr)
            if arr.ndim == 2:
                arr = arr[:, :, None]
            images[f"{name}_{key}_image"] = Image2DModel.parse(
                np.moveaxis(arr, 2, 0),
                dims=("c", "y", "x"),
                transformations={name: Scale([1.0 / float(scalef)] * 2, axes=("x", "y"))},
            )
        if name != lib:
            libs[rows] = name
    order = list(dict.fromkeys(libs))
    t.obs[region_key] = pd.Categorical(libs, categories=order)
    t.obs[instance_key] = instance
    parsed = TableModel.parse(t, region=order, region_key=region_key, instance_key=instance_key)
    if sdata is None:
        sdata = spatialdata.SpatialData(shapes=shapes, images=images, tables={table: parsed})
    else:
        for k, v in shapes.items():
            sdata.shapes[k] = v
        for k, v in images.items():
            sdata.images[k] = v
        sdata.tables[table] = parsed
    logger.info(f"to_spatialdata: table {table!r} ({t.n_obs} x {t.n_vars}) annotates new shapes {order}.")
    return sdata
