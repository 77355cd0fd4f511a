"""Tools: SpaCKLE completion, GeneQuery prediction, baselines and evaluation."""

from __future__ import annotations

from ._spackle import spackle_complete, SpackleModel
from ._evaluate_completion import evaluate_completion
from ._genequery import genequery_predict, GeneQueryModel
from ._evaluate_prediction import evaluate_prediction
from ._baselines import MeanPredictor, RidgePredictor, LinearHeadPredictor

__all__ = ['GeneQueryModel', 'LinearHeadPredictor', 'MeanPredictor', 'RidgePredictor', 'SpackleModel', 'evaluate_completion', 'evaluate_prediction', 'genequery_predict', 'spackle_complete']
