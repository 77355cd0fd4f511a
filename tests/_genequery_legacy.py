"""GeneQuery's settings before issue 19's validated defaults, for the tests written against them.

The golden, runner and mechanics tests pin these (one network, best-epoch checkpoint, the patch's own
features, text only, no test-time averaging, no ridge head, spot-aware, 20 epochs), so the new defaults change none of
their references; ``tests/test_genequery_defaults.py`` tests the defaults themselves.
"""

LEGACY = {
    "mode": "spot",
    "n_models": 1,
    "checkpoint": "best",
    "context_rings": 0,
    "gene_identity": 0,
    "tta": False,
    "max_epochs": 20,
    "ridge_blend": 0.0,
}
