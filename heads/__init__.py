"""Fusion heads: estimators on plain feature matrices (numpy in, probabilities out). Knows nothing of images."""
from .blocks import BlockScaler
from .knn import KNNHead
from .logistic import LogisticHead
from .mlp import MLPHead
from .second_stage import KnnSecondStage
from .state import State, StateError
from .vote import MajorityVote, WeightedVote

HEADS = {"logistic": LogisticHead, "mlp": MLPHead, "knn": KNNHead}
VOTES = {"vote": MajorityVote, "weighted-vote": WeightedVote}

__all__ = ["BlockScaler", "KNNHead", "KnnSecondStage", "LogisticHead", "MLPHead", "MajorityVote", "WeightedVote",
           "HEADS", "VOTES", "State", "StateError"]
