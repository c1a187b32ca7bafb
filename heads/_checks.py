"""Input checks shared by the heads."""
from __future__ import annotations

import numpy as np
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_X_y, validate_data


def fit_input(est, X, y) -> tuple[np.ndarray, np.ndarray]:
    """Validate (X, y) for fit: finite floats, binary classification; sets classes_ and n_features_in_."""
    X, y = validate_data(est, X, y, dtype=np.float32 if getattr(est, "_float32", False) else np.float64)
    check_classification_targets(y)
    est.classes_, y_idx = np.unique(y, return_inverse=True)
    if len(est.classes_) < 2:
        raise ValueError(f"only one class present in y ({est.classes_.tolist()}); {type(est).__name__} needs 2 "
                         "classes (a fold without both labels?)")
    if len(est.classes_) > 2:
        raise ValueError(f"Only binary classification is supported. {type(est).__name__} got classes "
                         f"{est.classes_.tolist()}")
    return X, y_idx


def predict_input(est, X) -> np.ndarray:
    return validate_data(est, X, reset=False, dtype=np.float32 if getattr(est, "_float32", False) else np.float64)


class BinaryMixin:
    """predict from predict_proba for binary heads; declares binary-only to scikit-learn's checks."""

    def predict(self, X):
        p = self.predict_proba(X)[:, 1]
        return self.classes_[(p >= 0.5).astype(int)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


class FaissIndexPickle:
    """Pickling of an estimator whose fitted faiss index lives in `index_` (serialised to bytes and back)."""

    def __getstate__(self):
        state = self.__dict__.copy()
        if "index_" in state:
            import faiss

            state["index_"] = faiss.serialize_index(state["index_"])
        return state

    def __setstate__(self, state):
        if "index_" in state and isinstance(state["index_"], np.ndarray):
            import faiss

            state["index_"] = faiss.deserialize_index(state["index_"])
        self.__dict__.update(state)


def index_vectors(index) -> np.ndarray:
    """The vectors a faiss index holds, in the order of their ids (an IVF index gets a direct map for it)."""
    if hasattr(index, "make_direct_map"):
        index.make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


__all__ = ["fit_input", "predict_input", "BinaryMixin", "FaissIndexPickle", "index_vectors", "check_array",
           "check_X_y"]
