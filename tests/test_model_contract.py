"""The one contract of the models of ``sp.tl`` (issue 18): data bound in ``train(adata)``, one base class,
one save format, one name for the masking fraction; the old forms raise errors naming the new ones."""

from __future__ import annotations

import pytest

import spared_tools as sp


def test_genequery_predict_return_model_names_the_new_form():
    a = sp.datasets.example()
    with pytest.raises(TypeError, match=r"return_model.*GeneQueryModel\(\.\.\.\).*model=model"):
        sp.tl.genequery_predict(a, return_model=True)
