"""Tools: SpaCKLE completion, GeneQuery prediction, baselines and evaluation."""

from ._baselines import MeanPredictor, RidgePredictor
from ._evaluate_completion import evaluate_completion
from ._evaluate_prediction import evaluate_prediction
from ._genequery import GeneQueryModel
from ._genequery_predict import genequery_predict
from ._linear_head import LinearHeadPredictor
from ._spackle import SpackleModel
from ._spackle_complete import spackle_complete

__all__ = [
    "GeneQueryModel",
    "LinearHeadPredictor",
    "MeanPredictor",
    "RidgePredictor",
    "SpackleModel",
    "evaluate_completion",
    "evaluate_prediction",
    "genequery_predict",
    "spackle_complete",
]
