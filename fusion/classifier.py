"""FusionClassifier: fusion heads over cached features, saved as one artifact, predicting from images."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from genderfusion.extract.atomic import atomic_path
from genderfusion.extract.errors import WorkspaceError
from genderfusion.extract.sources.base import FINETUNED, FROZEN, FeatureSource
from genderfusion.heads import HEADS
from genderfusion.heads.second_stage import KnnSecondStage, in_band

from .features import FusionData, Outputs, load_sources
from .images import decode_inputs
from .second_stage import descriptors
from .protocol import (PROTOCOLS, global_blocks, global_matrix, global_test_matrix, per_fold_matrix,
                       per_fold_test_matrix, pooled_blocks, pooled_matrix, pooled_test_matrix)

FORMAT = "genderfusion-fusion-v2"  # v2: source recipes of extract.sources.spec


def head_factory(head: str, params: dict | None = None):
    """block widths -> an unfitted head of the given kind."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
    return lambda blocks: HEADS[head](blocks=blocks, **(params or {}))


def _refuse_changed(name: str, now: dict, then: dict) -> None:
    if now != then:
        raise WorkspaceError(
            f"source {name} changed since this fusion model was trained: checkpoint sha256 now "
            f"{now.get('checkpoint_sha256')}, at training {then.get('checkpoint_sha256')}"
            + ("" if now.get("checkpoint_sha256") != then.get("checkpoint_sha256") else
               f" (other changes: {sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))})")
            + "; retrain the head with train-head")


class FusionClassifier:
    """Stacked fusion of several feature sources.

    protocol "per-fold": one head per fold, each in its fold model's feature space; a prediction averages them.
    protocol "global": one head on frozen features plus the fine-tuned sources' logits.
    protocol "pooled": one head on frozen features plus the fine-tuned sources' features and logits, the fold models'
    features read as one space; a prediction averages the head over the K fold models' features.
    A second stage (fit_second_stage) re-examines the predictions whose P(female) falls in `band`.
    """

    def __init__(self, sources: Sequence[str] = (), head: str = "logistic", protocol: str = "per-fold",
                 head_params: dict | None = None, threshold: float = 0.5, workdir: str | os.PathLike = "data",
                 band: tuple[float, float] = (0.45, 0.55)):
        self.sources = sources
        self.head = head
        self.protocol = protocol
        self.head_params = head_params
        self.threshold = threshold
        self.workdir = workdir
        self.band = band

    # ---- fitting on cached features ----------------------------------------------------------------------
    def fit(self, data: FusionData | None = None) -> "FusionClassifier":
        """Fit on the caches of `sources` in `workdir` (or on already loaded FusionData)."""
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        data = data if data is not None else load_sources(self.workdir, list(self.sources))
        make = head_factory(self.head, self.head_params)
        has_finetuned = any(s.kind == FINETUNED for s in data.sources)
        self.per_fold_ = self.protocol == "per-fold" and has_finetuned
        self.pooled_ = self.protocol == "pooled" and has_finetuned
        use = data.trainable
        if self.per_fold_:
            blocks = [s.width for s in data.sources]
            rows = [np.flatnonzero((data.fold == k) & use) for k in range(data.k)]
            self.heads_ = [make(blocks).fit(per_fold_matrix(data.sources, r), data.y[r]) for r in rows]
        elif self.pooled_:
            self.heads_ = [make(pooled_blocks(data.sources)).fit(pooled_matrix(data.sources)[use], data.y[use])]
        else:
            self.heads_ = [make(global_blocks(data.sources)).fit(global_matrix(data.sources)[use], data.y[use])]
        self.recipes_ = [s.attrs["recipe"] for s in data.sources]
        self.source_names_ = [s.name for s in data.sources]
        self.workdir_ = str(Path(self.workdir).resolve())
        self.k_ = data.k
        self.exported_ = None
        self.train_labels_ = (np.asarray(data.ids, dtype=str), np.asarray(data.y, dtype=np.int8),
                              np.asarray(data.skipped_ids, dtype=str))  # rows trained on, and rows skipped as corrupt
        self.second_stage_ = None  # fit_second_stage adds one
        return self

    def fit_second_stage(self, data: FusionData, p_first: np.ndarray) -> "FusionClassifier":
        """Fit the second stage on the training rows' out-of-fold first-stage P(female) (`p_first`)."""
        X, blocks = descriptors(data)
        use = data.trainable
        self.second_stage_ = KnnSecondStage(self.band, blocks=blocks).fit(X[use], data.y[use], p_first[use],
                                                                          data.fold[use])
        return self

    def _stages(self, outputs: list[Outputs]) -> tuple[np.ndarray, np.ndarray]:
        """P(female) of the first stage and the final one (the second stage's inside the band, when fitted)."""
        if self.per_fold_:
            p = np.mean([h.predict_proba(per_fold_test_matrix(outputs, k))[:, 1] for k, h in enumerate(self.heads_)],
                        axis=0)
        elif self.pooled_:
            p = np.mean([self.heads_[0].predict_proba(pooled_test_matrix(outputs, k))[:, 1] for k in range(self.k_)],
                        axis=0)
        else:
            p = self.heads_[0].predict_proba(global_test_matrix(outputs))[:, 1]
        if self.second_stage_ is None:
            return p, p
        X = np.hstack([o.features[0].astype(np.float32) for o in outputs if o.kind == FROZEN])
        return p, self.second_stage_.predict_proba(X, p)

    def _proba(self, outputs: list[Outputs]) -> np.ndarray:
        p = self._stages(outputs)[1]
        return np.column_stack([1 - p, p])

    def _details(self, outputs: list[Outputs], band: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
        first, final = self._stages(outputs)
        redone = in_band(first, self.band) & (self.second_stage_ is not None)
        return {"p_female": final, "p_first_stage": first, "stage": np.where(redone, 2, 1),
                "doubtful": in_band(first, self.band if band is None else band)}

    def _cached_outputs(self, workdir: str | os.PathLike | None) -> tuple[np.ndarray, list[Outputs]]:
        """The test rows of the feature caches, after checking that their recipes are unchanged."""
        data = load_sources(workdir or self.workdir_, self.source_names_)
        for s, then in zip(data.sources, self.recipes_):
            _refuse_changed(s.name, s.attrs["recipe"], then)
        return data.test_ids, [s.test_outputs for s in data.sources]

    def predict_proba_cached(self, workdir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(test ids, P) for the test rows of the feature caches."""
        ids, outputs = self._cached_outputs(workdir)
        return ids, self._proba(outputs)

    def details_cached(self, workdir: str | os.PathLike | None = None, band: tuple[float, float] | None = None
                       ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(test ids, {p_female, p_first_stage, stage, doubtful}) for the test rows of the feature caches."""
        ids, outputs = self._cached_outputs(workdir)
        return ids, self._details(outputs, band)

    # ---- predicting from images --------------------------------------------------------------------------
    def check_sources(self) -> list[dict]:
        """The sources' recipes now, in the model's workspace, each refused if it differs from the one the heads
        were trained on (a changed checkpoint, weights file or preprocessing)."""
        from genderfusion.extract.data.workspace import Workspace
        from genderfusion.extract.sources.spec import source_recipe

        ws = Workspace(self.workdir_)
        recipes = []
        for then in self.recipes_:
            now = source_recipe(then["spec"], ws, len(then["checkpoint_sha256"]), then.get("folds_fingerprint"))
            _refuse_changed(then["source"], now, then)
            recipes.append(now)
        return recipes

    def _sources(self, batch_size: int, device: str) -> list[FeatureSource]:
        """The sources, built once per model object: from an exported file, or from the workspace after checking
        that their recipes are unchanged."""
        if getattr(self, "_built", None) is None:
            if self.exported_ is not None:
                from .export import exported_sources

                self._built = exported_sources(self, batch_size, device)
            else:
                from genderfusion.extract.data.workspace import Workspace
                from genderfusion.extract.sources.spec import build_source

                ws = Workspace(self.workdir_)
                self._built = [build_source(now, ws, batch_size, device) for now in self.check_sources()]
        return self._built

    def predict_proba(self, images, batch_size: int = 256, device: str = "auto") -> np.ndarray:
        """P(male), P(female) for images: paths, PIL images, HWC uint8 arrays, tensors, or a list mixing them."""
        return self._proba(self._outputs(images, batch_size, device))

    def predict_details(self, images, batch_size: int = 256, device: str = "auto",
                        band: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
        """Per image: p_female (final), p_first_stage, stage (2 where the second stage re-examined it) and doubtful
        (the first stage's P(female) inside `band`, default the model's)."""
        return self._details(self._outputs(images, batch_size, device), band)

    def _outputs(self, images, batch_size: int, device: str) -> list[Outputs]:
        from genderfusion.extract.sources.inputs import MemoryInputs

        arrays = decode_inputs(images)  # all or nothing: a bad image raises before any work
        if getattr(self, "_inputs", None) is None:
            self._inputs = MemoryInputs()
        views: dict = {}  # each resized view or chip set is made once per call
        memo: dict = {}  # and each shared computation (a frozen trunk two sources share)
        outputs = []
        for src in self._sources(batch_size, device):
            if src.input not in views:
                views[src.input] = self._inputs(arrays, src.input)
            batch = views[src.input]
            feats, logits = zip(*src.compute_spaces(batch, range(src.n_spaces), memo))
            outputs.append(Outputs(src.kind, np.stack(feats), None if logits[0] is None else np.stack(logits)))
        return outputs

    def predict(self, images, **kw) -> np.ndarray:
        """0 = male, 1 = female."""
        return (self.predict_proba(images, **kw)[:, 1] >= self.threshold).astype(np.int64)

    def predict_frame(self, images, band: tuple[float, float] = (0.45, 0.55), skip_bad: bool = False,
                      batch_size: int = 256, device: str = "auto"):
        """A pandas DataFrame, one row per image: path ('<image i>' for one in memory), p_female, label (-1 where
        unreadable), doubtful (first-stage P(female) inside `band`), stage (2: re-examined by the second stage; 0:
        unreadable), error (with skip_bad: why the image could not be read)."""
        from .photos import predict_frame

        return predict_frame(self, images, band, skip_bad, batch_size, device)

    def __setstate__(self, state):
        state.setdefault("band", (0.45, 0.55))  # saved before the second stage existed
        state.setdefault("second_stage_", None)
        state.setdefault("pooled_", False)  # saved before the pooled protocol existed
        state.setdefault("train_labels_", None)  # saved before the training labels were recorded
        state.setdefault("exported_", None)  # a model in its workspace (export.load_export sets the file)
        self.__dict__.update(state)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_built", None)  # loaded models are rebuilt (and re-verified) after loading
        state.pop("_inputs", None)
        return state

    def detached(self) -> "FusionClassifier":
        """A copy bound to no workspace (what an exported file holds)."""
        clf = pickle.loads(pickle.dumps(self))
        clf.workdir_ = None
        return clf

    # ---- artifact ----------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """One file: heads, source recipes (checkpoint/weights sha256, preprocessing), threshold."""
        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                pickle.dump({"format": FORMAT, "model": self}, fh)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, workdir: str | os.PathLike | None = None) -> "FusionClassifier":
        """A saved model. Its workspace is `workdir`, else the one it was trained in, else - for a workspace that
        was moved - the one holding the model file (<workdir>/heads/<name>/model.pkl)."""
        path = Path(path)
        if path.is_dir():
            path = path / "model.pkl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no fusion model; train one with `train-head`")
        from .export import is_export, load_export

        if is_export(path):  # a self-contained file: predicts from images; its workspace only for cached rows
            clf = load_export(path)
            clf.workdir_ = None if workdir is None else str(Path(workdir).resolve())
            return clf
        with open(path, "rb") as fh:
            try:
                obj = pickle.load(fh)
            except (ModuleNotFoundError, AttributeError) as exc:  # saved by an older layout of the package
                raise ValueError(f"{path}: a fusion model of an older version ({exc}); retrain it with train-head"
                                 ) from exc
            except Exception as exc:  # pickle raises many types for truncated or corrupt bytes
                raise ValueError(f"{path}: not a readable fusion model (truncated or corrupt: "
                                 f"{type(exc).__name__}: {exc}); retrain it with train-head") from exc
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} artifact (format {obj.get('format') if isinstance(obj, dict) else '?'}"
                             "); retrain it with train-head")
        clf = obj["model"]
        if workdir is not None:
            clf.workdir_ = str(Path(workdir).resolve())
        elif not (Path(clf.workdir_) / "features").is_dir():
            moved = path.resolve().parents[2]
            if not (moved / "features").is_dir():
                raise WorkspaceError(f"{path}: its workspace {clf.workdir_} is gone and {moved} holds no features; "
                                     "pass the workspace: FusionClassifier.load(path, workdir=...)")
            clf.workdir_ = str(moved)
        return clf
