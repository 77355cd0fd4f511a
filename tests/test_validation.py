"""Input checks shared by every function (``spared_tools._validation``)."""

from __future__ import annotations

import numpy as np
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
