"""Input checks shared by every function (``spared_tools._validation``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sps

from spared_tools._validation import check_finite_nonnegative


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("sparse", [False, True])
def test_non_finite_values_are_counted_and_named(bad, sparse):
    X = np.ones((4, 5))
    X[1, 2] = bad
    X[3, 0] = bad
    with pytest.raises(ValueError, match=r"adata.X contains 2 NaN or infinite"):
        check_finite_nonnegative(sps.csr_matrix(X) if sparse else X, what="adata.X", allow_negative=True)


def test_negative_values_and_allowed_cases():
    X = np.zeros((3, 3), dtype=np.float32)
    check_finite_nonnegative(X)
    check_finite_nonnegative(np.zeros((0, 3)))
    X[0, 0] = -1
    check_finite_nonnegative(X, allow_negative=True)
    with pytest.raises(ValueError, match="1 negative values"):
        check_finite_nonnegative(X)
    with pytest.raises(TypeError, match="numeric"):
        check_finite_nonnegative(np.zeros((2, 2), dtype=bool))
    check_finite_nonnegative(np.arange(6).reshape(2, 3))  # integers: no finiteness check needed


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("human", "human"),
        ("Human", "human"),
        (" Homo sapiens ", "human"),
        ("hs", "human"),
        ("MOUSE", "mouse"),
        ("Mus musculus", "mouse"),
        ("mm", "mouse"),
    ],
)
def test_check_organism_accepts_names_and_aliases(given, canonical):
    from spared_tools._validation import check_organism

    assert check_organism(given) == canonical


@pytest.mark.parametrize("bad", ["rat", "", None, 3, "homo"])
def test_check_organism_names_the_argument_and_the_choices(bad):
    from spared_tools._validation import check_organism

    with pytest.raises(ValueError, match=r"Unknown species .*species must be 'human' or 'mouse'"):
        check_organism(bad, "species")


def test_validation_reexports_the_argument_checks():
    import spared_tools._checks as checks
    import spared_tools._validation as validation

    for name in ("check_int", "check_number", "check_choice", "check_organism"):
        assert getattr(validation, name) is getattr(checks, name)
    public = {
        n
        for n in vars(validation)
        if n.startswith("check_") or n in ("get_matrix", "input_layer", "slide_labels")
    }
    assert set(validation.__all__) == public | {"ORGANISMS"}


@pytest.mark.parametrize(
    ("value", "ok"), [(0, True), (5, True), (np.int64(2), True), (-1, False), (True, False), (1.0, False)]
)
def test_check_nonnegative_int_keeps_its_message(value, ok):
    from spared_tools._validation import check_nonnegative_int

    if ok:
        assert check_nonnegative_int(value, "n_rings") == int(value)
        assert type(check_nonnegative_int(value, "n_rings")) is int
    else:
        with pytest.raises(ValueError, match=r"^n_rings must be a non-negative integer, got"):
            check_nonnegative_int(value, "n_rings")


def test_check_subset_none_one_many_unknown_repeated():
    from spared_tools._validation import check_subset

    avail = ["B4", "C2", "C3"]
    kw = {"name": "sections", "what": "her2st sections", "where": "available in /x"}
    assert check_subset(None, avail, **kw) == avail and check_subset(None, avail, **kw) is not avail
    assert check_subset("C2", avail, **kw) == ["C2"]
    assert check_subset(("C3", "B4"), avail, **kw) == ["C3", "B4"]  # the order asked for
    with pytest.raises(
        KeyError, match=r"Unknown her2st sections \['Z9'\]; available in /x: \['B4', 'C2', 'C3'\]"
    ):
        check_subset(["B4", "Z9"], avail, **kw)
    with pytest.raises(ValueError, match=r"^sections lists a name more than once: \['B4', 'B4'\]"):
        check_subset(["B4", "B4"], avail, **kw)


def test_input_layer_refuses_overwrite_and_bad_values():
    import anndata as ad

    from spared_tools._validation import input_layer

    a = ad.AnnData(np.ones((3, 2), dtype=np.float32), layers={"log1p": -np.ones((3, 2), dtype=np.float32)})
    assert input_layer(a, None) is a.X
    assert input_layer(a, "log1p", key_added="combat", allow_negative=True) is a.layers["log1p"]
    with pytest.raises(ValueError, match=r"key_added='log1p' would overwrite the input layer"):
        input_layer(a, "log1p", key_added="log1p", allow_negative=True)
    with pytest.raises(ValueError, match=r"adata.layers\['log1p'\] contains 6 negative values"):
        input_layer(a, "log1p")
    with pytest.raises(KeyError, match="Layer 'nope' not found"):
        input_layer(a, "nope")


def test_tpm_accepts_organism_aliases_through_check_organism():
    import anndata as ad

    import spared_tools as sp

    a = ad.AnnData(np.ones((2, 2), dtype=np.float32), var=pd.DataFrame(index=["ACTB", "GAPDH"]))
    b = a.copy()
    sp.pp.tpm(a, organism="human")
    sp.pp.tpm(b, organism="Homo sapiens")
    np.testing.assert_array_equal(a.layers["tpm"], b.layers["tpm"])
    with pytest.raises(ValueError, match=r"^Unknown organism 'rat'; organism must be 'human' or 'mouse'"):
        sp.pp.tpm(a.copy(), organism="rat")


def test_check_int_says_or_none_when_none_is_allowed():
    import spared_tools as sp
    from spared_tools._checks import check_int

    with pytest.raises(ValueError, match=r"^chunk must be a positive integer or None, got 0\.$"):
        check_int(0, "chunk", allow_none=True)
    with pytest.raises(ValueError, match=r"^settings.n_jobs must be a positive integer or None, got 0"):
        sp.settings.n_jobs = 0
    with pytest.raises(ValueError, match=r"^chunk_size must be a positive integer or None, got 0"):
        sp.pp.moran(sp.datasets.example(), chunk_size=0)
