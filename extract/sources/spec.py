"""A source's spec (how the user asked for it), its name, its recipe (stated once), and building it.

The recipe is a pure function of the spec, the weights or checkpoints (sha256) and the preprocessing, computed
without torch: the cache check, the cache attributes and the saved fusion model all read this one dict.
"""
from __future__ import annotations

from pathlib import Path

from ..data.workspace import Workspace, safe_name
from ..errors import WorkspaceError
from ..models.checkpoints import fold_checkpoints, saved_preprocess
from ..faces import faceres
from ..faces.face_files import checked_sha256
from ..faces.face_nets import DEFAULT_ALIGN, GENDER_MEANS, face_net_config
from ..models.registry import lookup, weights_identity
from .base import FINETUNED, FROZEN, TTAS, FeatureSource

DEFAULT_GENDER_LAYER = "layer_3_relu"
# the fine-tunable face networks (registry entries) and the frozen face source each is with --frozen
FROZEN_FACE = {"face-resnet": "dlib-face", "gender-cnn": "gender-cnn", "faceres-mobilenet": "faceres-deep"}
ALWAYS_FROZEN = ("dlib-face", *faceres.NETS)  # face networks that are only frozen sources
# flip TTA where it was measured to help (5-fold CV of a logistic probe on the 18,000 training faces: dlib-face
# 0.9267 -> 0.9284, gender-cnn-noalign 0.9203 -> 0.9231); a fine-tuned backbone's default is its registry entry's
# (flip for the face networks), a frozen backbone's "none"
DEFAULT_TTA = {"face": "flip", FROZEN: "none"}


def _default_layer(net: str) -> str:
    """The layer a frozen face net's spec records by default (dlib-face has one output; its spec keeps the gender
    CNN's default, as caches written before FaceRes do)."""
    return faceres.DEFAULT_LAYER if net in faceres.NETS else DEFAULT_GENDER_LAYER


def source_spec(backbone: str, frozen: bool = False, pool: str | None = None, img_size: int | None = None,
                weights: str | None = None, pretrained: bool = False, align: bool | None = None,
                layer: str | None = None, tta: str | None = None) -> dict:
    """Everything needed to rebuild a source later (recorded in its cache and in fusion artifacts).

    A face network is a frozen face source with frozen (dlib-face and FaceRes always), else fine-tuned like any
    backbone. pool None: the registry entry's pooling (flatten; avg for the face ResNet). tta None: the default of
    the source's type (DEFAULT_TTA, or the registry entry of a fine-tuned backbone). align, layer None: the face
    net's defaults."""
    face = backbone in ALWAYS_FROZEN or (frozen and backbone in FROZEN_FACE)
    kind = "face" if face else FROZEN if frozen else FINETUNED
    tta = (lookup(backbone).tta if kind == FINETUNED else DEFAULT_TTA[kind]) if tta is None else tta
    if tta not in TTAS:
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose one of {TTAS}")
    if face:
        net = FROZEN_FACE.get(backbone, backbone)
        return {"type": "face", "net": net, "align": DEFAULT_ALIGN[net] if align is None else align,
                "layer": layer or _default_layer(net),
                "tta": tta}
    pool = pool or lookup(backbone).pool
    if frozen:
        return {"type": FROZEN, "backbone": backbone, "img_size": img_size or 224, "pool": pool,
                "weights": str(Path(weights).resolve()) if weights and weights != "random" else weights,
                "pretrained": pretrained, "tta": tta}
    return {"type": FINETUNED, "backbone": backbone, "pool": pool, "tta": tta}


def source_name(spec: dict) -> str:
    """The source's one name, also its cache file's stem: the backbone (sanitised), '<backbone>-frozen', or the
    frozen face net (dlib-face, gender-cnn-frozen, faceres-deep) with its layer when not the default, and
    '-noalign' (plain resizing) or '-align' (landmarks) when not its default; '-flip' with flip TTA."""
    flip = "-flip" if spec.get("tta", "none") == "flip" else ""
    if spec["type"] == "face":
        net = spec["net"]
        name = net if net in ALWAYS_FROZEN else f"{net}-frozen"
        if net != "dlib-face" and spec["layer"] != _default_layer(net):
            name += f"-{spec['layer']}"
        if spec["align"] != DEFAULT_ALIGN[net]:
            name += "-align" if spec["align"] else "-noalign"
        return name + flip
    return safe_name(spec["backbone"]) + ("-frozen" if spec["type"] == FROZEN else "") + flip


def _finetuned_recipe(spec: dict, ws: Workspace, k: int, folds_fp: str) -> dict:
    backbone = spec["backbone"]
    lookup(backbone)  # an unknown name lists the known ones before asking for checkpoints
    metas = fold_checkpoints(ws, backbone, k, folds_fp)
    pres = [saved_preprocess(m, ws.fold_files(backbone, f).best) for f, m in enumerate(metas)]
    first = metas[0]["identity"]["config"]
    for f, (meta, pre) in enumerate(zip(metas, pres)):
        config = meta["identity"]["config"]
        differs = {key: (value, first.get(key)) for key, value in config.items()
                   if key != "seed" and value != first.get(key)}
        if pre != pres[0]:
            differs["preprocessing"] = (pre, pres[0])
        if differs:
            raise WorkspaceError(
                f"{backbone}: fold {f} was trained with another config than fold 0 ({list(differs)}: "
                f"{[v[0] for v in differs.values()]} vs {[v[1] for v in differs.values()]}); retrain fold {f} "
                f"(train-backbone, fold {f}), so that every fold model shares one feature recipe")
    entry, extra = lookup(backbone), {}
    if entry.chip_padding is not None:
        extra = {"chip_padding": entry.chip_padding, "alignment": "dlib 5-point landmarks",
                 "fallback": "plain resize when landmarks implausible",
                 "shape_predictor_sha256": checked_sha256("dlib-face")["shape_predictor"]}
    if first.get("trunk_cut") is not None:
        extra["trunk_cut"] = first["trunk_cut"]
    return {"kind": FINETUNED, "backbone": backbone, "layer": "forward_features", "pooling": spec["pool"],
            **pres[0], "checkpoint_sha256": [m["sha256"] for m in metas], "folds_fingerprint": folds_fp,
            "extra": extra}


def _frozen_recipe(spec: dict) -> dict:
    pre = lookup(spec["backbone"]).preprocess(spec["img_size"])
    return {"kind": FROZEN, "backbone": spec["backbone"], "layer": "forward_features", "pooling": spec["pool"],
            **pre.as_dict(), "checkpoint_sha256": [weights_identity(spec["backbone"], spec["weights"],
                                                                   spec["pretrained"])], "extra": {}}


def _face_recipe(spec: dict) -> dict:
    cfg = face_net_config(spec["net"], spec["align"], spec["layer"])
    sha = checked_sha256(cfg.net)
    gender, hse = cfg.net == "gender-cnn", cfg.net in faceres.NETS
    mean = list(GENDER_MEANS) if gender else list(faceres.BGR_MEANS[::-1]) if hse else [0.0] * 3
    runtime = ("torch (weights read from the .dat)" if cfg.net == "dlib-face" else
               "onnxruntime (converted from the TF.js graph)" if hse else "onnxruntime")
    extra = {"alignment": "dlib 5-point landmarks" if cfg.align else "none (plain resize)",
             "chip_padding": cfg.padding, "fallback": "plain resize when landmarks implausible",
             "shape_predictor_sha256": sha["shape_predictor"], "runtime": runtime}
    if hse:
        extra.update(channel_order="BGR", weights_sha256=sha["weights"])
    return {"kind": FROZEN, "backbone": Path(cfg.model).name, "layer": cfg.layer, "pooling": "none",
            "img_size": cfg.chip, "mean": mean, "std": [256.0] * 3 if gender else [1.0] * 3,
            "checkpoint_sha256": [sha["model"]], "extra": extra}


def source_recipe(spec: dict, ws: Workspace, k: int, folds_fp: str | None) -> dict:
    """Everything that determines a source's features; a cache or fusion model with another recipe is stale."""
    if spec["type"] == "face":
        body = _face_recipe(spec)
    elif spec["type"] == FROZEN:
        body = _frozen_recipe(spec)
    else:
        body = _finetuned_recipe(spec, ws, k, folds_fp)
    return {"source": source_name(spec), "spec": spec, **body}


def build_source(recipe: dict, ws: Workspace, batch_size: int = 256, device: str = "auto") -> FeatureSource:
    """Load the models of a recipe once: a face network, a frozen backbone, or the K fold checkpoints."""
    spec = recipe["spec"]
    if spec["type"] == "face":
        from .face import FaceNetSource

        return FaceNetSource(recipe, face_net_config(spec["net"], spec["align"], spec["layer"]), device)
    from .torch_source import finetuned_source, frozen_source  # torch: only when a source is built

    if spec["type"] == FROZEN:
        return frozen_source(recipe, batch_size, device)
    return finetuned_source(recipe, ws, batch_size, device)
