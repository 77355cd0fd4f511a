"""Property tests: random small AnnDatas with random defects through ``spared_pipeline`` and its steps.

Every call must either raise a named ``ValueError`` / ``KeyError`` / ``TypeError`` from this package
(the traceback ends in ``spared_tools`` code, so it is our check and not an internal crash) or return a
result that passes the invariants: no NaN in the outputs, observed entries untouched, the order of the
spots kept, and the input unchanged (compared with a deep copy taken before the call).
"""

from __future__ import annotations

import copy
import traceback
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sps

import spared_tools as sp

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PACKAGE = str(Path(sp.__file__).resolve().parent)
NAMED = (ValueError, KeyError, TypeError)

DEFECTS = (
    "none",
    "nan",
    "inf",
    "negative",
    "non_integer",
    "duplicate_genes",
    "duplicate_spots",
    "duplicate_position",
    "empty_slide_category",
    "one_spot_slide",
    "all_zero_spot",
    "all_zero_gene",
    "unknown_genes",
    "bool_dtype",
    "int_dtype",
    "float16_dtype",
    "object_obs_slide",
    "nan_coordinate",
    "float_coordinate",
    "split_nan",
    "constant_gene",
)


def _known_genes(n: int) -> list[str]:
    table = sp.pp.gene_lengths("human")
    pc = table[(table.gene_type == "protein_coding") & table.chrom.str.match(r"^chr\d+$")]
    names = pc.gene_name.drop_duplicates()
    return list(names.iloc[:n])


GENES = _known_genes(60)


def _make(seed: int, n_slides: int, n_genes: int, side: int, sparse: bool, defects: list[str]) -> ad.AnnData:
    """A legacy-ST-like collection (square lattice, ``side`` x ``side`` per slide) with the given defects."""
    rng = np.random.default_rng(seed)
    obs, xs = [], []
    for s in range(n_slides):
        for r in range(side):
            for c in range(side):
                obs.append({"slide_id": f"S{s}", "array_row": r, "array_col": c})
    obs_df = pd.DataFrame(obs, index=[f"spot{i}" for i in range(len(obs))])
    n = len(obs_df)
    rate = rng.gamma(2.0, 3.0, n_genes)
    X = rng.poisson(rate[None, :] * rng.uniform(0.5, 1.5, (n, 1))).astype(np.float64)
    genes = list(GENES[:n_genes])
    obs_df["split"] = np.where(obs_df["slide_id"] == "S0", "train", "test") if n_slides > 1 else "train"
    xs = np.log1p(X) if "non_integer" in defects else X
    if "nan" in defects:
        xs[rng.integers(n), rng.integers(n_genes)] = np.nan
    if "inf" in defects:
        xs[rng.integers(n), rng.integers(n_genes)] = np.inf
    if "negative" in defects:
        xs[rng.integers(n), rng.integers(n_genes)] = -3
    if "all_zero_spot" in defects:
        xs[rng.integers(n)] = 0
    if "all_zero_gene" in defects:
        xs[:, rng.integers(n_genes)] = 0
    if "constant_gene" in defects:
        xs[:, rng.integers(n_genes)] = 7
    if "duplicate_genes" in defects and n_genes > 1:
        genes[1] = genes[0]
    if "unknown_genes" in defects:
        genes[-1] = "NOT_A_GENE_1"
    if "duplicate_position" in defects:
        obs_df.iloc[1, obs_df.columns.get_loc("array_col")] = int(obs_df.iloc[0]["array_col"])
        obs_df.iloc[1, obs_df.columns.get_loc("array_row")] = int(obs_df.iloc[0]["array_row"])
    if "nan_coordinate" in defects:
        obs_df["array_row"] = obs_df["array_row"].astype(float)
        obs_df.iloc[0, obs_df.columns.get_loc("array_row")] = np.nan
    if "float_coordinate" in defects:
        obs_df["array_col"] = obs_df["array_col"] + 0.5
    if "split_nan" in defects:
        obs_df["split"] = obs_df["split"].astype(object)
        obs_df.iloc[0, obs_df.columns.get_loc("split")] = np.nan
    if "one_spot_slide" in defects:
        obs_df.iloc[-1, obs_df.columns.get_loc("slide_id")] = "LONELY"
    if "object_obs_slide" in defects:
        obs_df["slide_id"] = obs_df["slide_id"].astype(object)
    else:
        obs_df["slide_id"] = pd.Categorical(obs_df["slide_id"])
    if "empty_slide_category" in defects:
        obs_df["slide_id"] = pd.Categorical(obs_df["slide_id"]).add_categories(["EMPTY"])
    if "bool_dtype" in defects:
        xs = xs > 0
    elif "int_dtype" in defects and np.isfinite(xs).all() and (xs == np.round(xs)).all():
        xs = xs.astype(np.int64)
    elif "float16_dtype" in defects:
        xs = xs.astype(np.float16)
    sparse = sparse and xs.dtype != np.float16  # scipy.sparse has no float16
    a = ad.AnnData(X=sps.csr_matrix(xs) if sparse else xs, obs=obs_df)
    a.var_names = genes  # may hold duplicates on purpose
    if "duplicate_spots" in defects:
        names = list(a.obs_names)
        names[1] = names[0]
        with warnings.catch_warnings():  # anndata warns about the defect we make on purpose
            warnings.simplefilter("ignore", UserWarning)
            a.obs_names = names
    a.obsm["spatial"] = np.column_stack([obs_df["array_col"], obs_df["array_row"]]).astype(np.float64) * 100.0
    return a


def _snapshot(a: ad.AnnData) -> ad.AnnData:
    return copy.deepcopy(a)


def _dense(M) -> np.ndarray:
    return np.asarray(M.toarray() if sps.issparse(M) else M)


def _assert_unchanged(before: ad.AnnData, after: ad.AnnData) -> None:
    np.testing.assert_array_equal(_dense(after.X), _dense(before.X))  # NaN compare equal here
    assert after.X.dtype == before.X.dtype and sps.issparse(after.X) == sps.issparse(before.X)
    pd.testing.assert_frame_equal(after.obs, before.obs)
    pd.testing.assert_frame_equal(after.var, before.var)
    assert list(after.obs_names) == list(before.obs_names)
    assert list(after.var_names) == list(before.var_names)
    assert set(after.layers.keys()) == set(before.layers.keys())
    assert set(after.obsm.keys()) == set(before.obsm.keys())
    for k in before.obsm:
        np.testing.assert_array_equal(after.obsm[k], before.obsm[k])
    assert set(after.uns.keys()) == set(before.uns.keys())


def _assert_named(exc: BaseException) -> None:
    """A named error raised by this package's own code (its traceback ends in spared_tools)."""
    assert isinstance(exc, NAMED), f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1].filename if frames else ""
    assert str(Path(last).resolve()).startswith(PACKAGE), (
        f"{type(exc).__name__} raised outside spared_tools ({last}:{frames[-1].lineno}): {exc}"
    )
    assert len(str(exc)) > 20  # a message, not a bare key


def _is_subsequence(sub: list[str], full: list[str]) -> bool:
    it = iter(full)
    return all(any(x == y for y in it) for x in sub)


def _check_pipeline_result(a: ad.AnnData, out: ad.AnnData) -> None:
    assert _is_subsequence(list(out.obs_names), list(a.obs_names))  # order kept, spots only removed
    for key in ("tpm", "log1p", "median", "combat", "deltas"):
        if key in out.layers:
            assert not np.isnan(_dense(out.layers[key])).any(), key
    # observed entries untouched: X and the counts copy are the input's counts on the kept spots/genes
    rows = a.obs_names.get_indexer(out.obs_names)
    cols = pd.Index(a.var_names).get_indexer(out.var_names)
    np.testing.assert_array_equal(_dense(out.X), _dense(a.X)[np.ix_(rows, cols)].astype(np.float64))
    np.testing.assert_array_equal(_dense(out.layers["counts"]), _dense(out.X))
    mask = _dense(out.layers["mask"]).astype(bool)
    np.testing.assert_array_equal(mask, _dense(out.X) > 0)
    np.testing.assert_array_equal(_dense(out.layers["median"])[mask], _dense(out.layers["log1p"])[mask])


defects_strategy = st.lists(st.sampled_from(DEFECTS), min_size=0, max_size=2, unique=True)
SETTINGS = settings(
    max_examples=int(__import__("os").environ.get("PROP_EXAMPLES", "80")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    n_slides=st.integers(1, 3),
    n_genes=st.integers(3, 40),
    side=st.integers(2, 6),
    sparse=st.booleans(),
    defects=defects_strategy,
)
def test_pipeline_named_error_or_valid_result(seed, n_slides, n_genes, side, sparse, defects):
    a = _make(seed, n_slides, n_genes, side, sparse, defects)
    before = _snapshot(a)
    split_key = "split" if n_slides > 1 or "split_nan" in defects else None
    try:
        out = sp.pp.spared_pipeline(
            a,
            organism="human",
            split_key=split_key,
            cell_min_counts=0,
            gene_min_counts=0,
            real_data_percentage=0.0,
            top_moran_genes=min(4, n_genes),
            combat_key=None,
        )
    except NAMED as exc:
        event(f"named {type(exc).__name__}")
        _assert_named(exc)
    else:
        event("result")
        _check_pipeline_result(a, out)
    _assert_unchanged(before, a)


# anndata itself warns when an object with duplicated names is copied (the input's defect, not ours)
@pytest.mark.filterwarnings("ignore:Variable names are not unique:UserWarning")
@pytest.mark.filterwarnings("ignore:Observation names are not unique:UserWarning")
@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    n_slides=st.integers(1, 2),
    n_genes=st.integers(3, 20),
    side=st.integers(2, 5),
    sparse=st.booleans(),
    defects=defects_strategy,
    step=st.sampled_from(["tpm", "log1p", "filter", "graph", "median", "moran"]),
)
def test_single_steps_named_error_or_valid_result(seed, n_slides, n_genes, side, sparse, defects, step):
    a = _make(seed, n_slides, n_genes, side, sparse, defects)
    before = _snapshot(a)
    work = a.copy()
    try:
        if step == "tpm":
            out = sp.pp.tpm(work, organism="human", copy=True)
            t = _dense(out.layers["tpm"])
            known = out.var["has_gene_length"].to_numpy()
            assert not np.isnan(t[:, known]).any() and np.isnan(t[:, ~known]).all()
            np.testing.assert_array_equal(_dense(out.X), _dense(work.X))
        elif step == "log1p":
            out = sp.pp.log1p(work, layer=None, copy=True)
            np.testing.assert_allclose(
                _dense(out.layers["log1p"]), np.log2(1 + _dense(work.X).astype(np.float64)), rtol=1e-5
            )
        elif step == "filter":
            sp.pp.filter_spared(work, cell_min_counts=0, gene_min_counts=0)
            out = work
            assert _is_subsequence(list(out.obs_names), list(a.obs_names))
        elif step == "graph":
            out = sp.pp.spatial_graph(work, copy=True)
            C = out.obsp["spatial_connectivities"]
            assert (C != C.T).nnz == 0 and C.diagonal().sum() == 0
        elif step == "median":
            work.layers["x"] = work.X.copy()
            out = sp.pp.median_complete(work, layer="x", copy=True)
            got = _dense(out.layers["median"])
            obs = _dense(work.X) != 0
            assert not np.isnan(got).any()
            np.testing.assert_array_equal(got[obs], _dense(work.X)[obs].astype(got.dtype))
        else:
            sp.pp.spatial_graph(work)
            out = sp.pp.moran(work, copy=True)
            assert np.isfinite(out.var["moran_I"].to_numpy()[np.ptp(_dense(work.X), axis=0) > 0]).all()
        assert list(out.obs_names) == list(work.obs_names) or step == "filter"
        event(f"{step}: result")
    except NAMED as exc:
        event(f"{step}: named {type(exc).__name__}")
        _assert_named(exc)
    _assert_unchanged(before, a)
