from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp_sparse
import torch

import spared_tools as sp
from spared_tools import _validation as v
from spared_tools._settings import resolve_device, resolve_seed, seed_everything


def test_public_namespaces():
    for name in ("io", "pp", "tl", "pl", "datasets", "settings"):
        assert hasattr(sp, name)
    for sub in (sp.io, sp.pp, sp.tl, sp.pl, sp.datasets):
        for public in sub.__all__:
            assert callable(getattr(sub, public)), public


def test_settings_validation_and_restore():
    old = sp.settings.verbosity
    sp.settings.verbosity = 3
    assert sp.settings.verbosity == 3
    sp.settings.verbosity = old
    with pytest.raises(ValueError, match="verbosity"):
        sp.settings.verbosity = 7
    with pytest.raises(ValueError, match="device"):
        sp.settings.device = "tpu"
    with pytest.raises(ValueError, match="n_jobs"):
        sp.settings.n_jobs = 0
    with pytest.raises(ValueError, match="reuse_heap must be True or False"):
        sp.settings.reuse_heap = "no"  # type: ignore[assignment]
    assert sp.settings.reuse_heap is True


def test_resolve_device_cpu_and_missing_cuda():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_seed_everything_reproducible():
    seed_everything(123)
    a = (np.random.rand(3), torch.rand(3))  # noqa: NPY002
    seed_everything(123)
    b = (np.random.rand(3), torch.rand(3))  # noqa: NPY002
    np.testing.assert_array_equal(a[0], b[0])
    assert torch.equal(a[1], b[1])
    assert resolve_seed(None) == sp.settings.seed
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ValueError, match="seed"):
            resolve_seed(bad)


def _toy(n=4, g=3):
    a = ad.AnnData(np.arange(n * g, dtype=np.float32).reshape(n, g))
    a.obs["slide_id"] = pd.Categorical(["s1", "s1", "s2", "s2"][:n])
    a.obs["array_row"] = np.arange(n)
    a.obs["array_col"] = np.arange(n) * 2
    return a


def test_validation_errors_name_the_problem():
    a = _toy()
    with pytest.raises(TypeError, match="AnnData"):
        v.check_adata(np.zeros(3))
    with pytest.raises(KeyError, match="'nope'"):
        v.get_matrix(a, "nope")
    with pytest.raises(ValueError, match="NaN"):
        v.check_finite_nonnegative(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="negative"):
        v.check_finite_nonnegative(sp_sparse.csr_matrix(np.array([[1.0, -2.0]])))
    with pytest.raises(TypeError, match="numeric"):
        v.check_finite_nonnegative(np.array([[True, False]]))
    with pytest.raises(KeyError, match="GENE_X"):
        v.check_genes(a, ["0", "GENE_X"])
    b = a.copy()
    del b.obs["array_row"]
    with pytest.raises(KeyError, match="array_row"):
        v.check_array_coords(b)
    c = a.copy()
    c.obs["array_row"] = c.obs["array_row"].astype(float) + 0.5
    with pytest.raises(ValueError, match="integer"):
        v.check_array_coords(c)
    np.testing.assert_array_equal(v.slide_labels(a), [0, 0, 1, 1])
    np.testing.assert_array_equal(v.check_array_coords(a), np.c_[np.arange(4), np.arange(4) * 2])
