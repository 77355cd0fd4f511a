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


def _median_on_grid():
    from spared_tools._kernels.lattice import lattice_offsets, neighbor_lookup
    from spared_tools._kernels.median import adaptive_median_numba

    rows, cols = np.divmod(np.arange(900), 30)
    offsets, ring = lattice_offsets("square", 3)
    table = np.c_[np.arange(900), neighbor_lookup(np.zeros(900, dtype=np.int64), rows, cols, offsets)]
    X = np.random.default_rng(3).gamma(1.0, size=(900, 40)).astype(np.float32)
    X[X < 0.8] = 0
    return adaptive_median_numba(X, None, table, np.r_[0, ring], np.zeros(900, dtype=np.int64), n_rings=3)


def test_n_jobs_drives_torch_numba_and_blas():
    import os

    import numba
    from threadpoolctl import threadpool_info

    cores = len(os.sched_getaffinity(0))
    assert sp.settings.n_jobs == cores  # default: the cores this process may use
    try:
        sp.settings.n_jobs = 1
        assert sp.settings.n_jobs == 1
        assert torch.get_num_threads() == 1
        assert numba.get_num_threads() == 1
        pools = threadpool_info()
        assert pools and all(p["num_threads"] == 1 for p in pools)
        # numba kernels still give the same answer on one thread
        from spared_tools._kernels.median import slide_nonzero_median

        X = np.random.default_rng(0).random((50, 7)).astype(np.float32)
        X[X < 0.5] = 0
        med = slide_nonzero_median(X, np.zeros(50, dtype=np.int64), 1)[0]
        ref = [np.median(c[c != 0]) for c in X.T]
        np.testing.assert_allclose(med, ref, rtol=1e-6)
        one = _median_on_grid()
    finally:
        sp.settings.n_jobs = None
    np.testing.assert_array_equal(_median_on_grid(), one)  # row blocks on threads: same result
    assert sp.settings.n_jobs == cores
    assert torch.get_num_threads() == cores
    assert numba.get_num_threads() == min(cores, numba.config.NUMBA_NUM_THREADS)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="n_jobs"):
            sp.settings.n_jobs = bad  # type: ignore[assignment]


def test_import_sets_passive_openmp_wait_policy_unless_user_set():
    import os
    import subprocess
    import sys

    code = "import os, spared_tools, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
    # torch imported first: its OpenMP runtime already read the environment, which is left alone
    del env["OMP_WAIT_POLICY"]
    code = "import os, torch, spared_tools; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
