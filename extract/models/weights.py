"""Loading local weight files into a Backbone, with key mapping and a strict report of mismatches."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from genderfusion.files.digests import sha256_file
from ..errors import WeightsError

# Keys of a source model's own classifier, never part of a Backbone body.
_CLASSIFIER_PREFIXES = ("classifier.", "fc.", "head.fc.", "last_linear.")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a file, unwrapping {'state_dict': …} or {'model': …} containers; the face networks'
    own files (dlib's .dat, the gender CNN's .onnx) are read by their readers."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if path.suffix == ".onnx":
        from ..faces.gender_cnn import onnx_state_dict

        return onnx_state_dict(path)
    if path.suffix == ".json":  # a TF.js graph model: FaceRes
        from ..faces.faceres_torch import FaceResFormatError, tfjs_state_dict

        try:
            return tfjs_state_dict(path)
        except (FaceResFormatError, ValueError) as exc:
            raise WeightsError(str(exc)) from exc
    if path.suffix == ".dat":
        from ..faces.dlib_resnet import DlibFormatError, dat_state_dict

        try:
            return dat_state_dict(path)[1]
        except DlibFormatError as exc:
            raise WeightsError(str(exc)) from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _from_lukemelas(sd: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map EfficientNet-PyTorch keys (`_conv_stem`, `_blocks.N…`, `_fc`) onto timm's, which list the same
    tensors in the same order; every shape is checked."""
    src = [(k, v) for k, v in sd.items() if not k.startswith("_fc.")]
    dst = [k for k in want if not k.startswith(("classifier.", "model.classifier."))]
    if len(src) != len(dst):
        raise WeightsError(f"EfficientNet-PyTorch weights have {len(src)} tensors, the model {len(dst)}")
    out = {}
    for (k, v), d in zip(src, dst):
        if v.shape != want[d].shape:
            raise WeightsError(f"EfficientNet-PyTorch key {k} {tuple(v.shape)} does not map onto {d} {tuple(want[d].shape)}")
        out[d] = v
    return out


def _match(target: nn.Module, sd: dict[str, torch.Tensor], prefix: str) -> tuple[dict, list, list, list]:
    """Map sd onto target's keys (optionally by suffix), returning (mapped, missing, unexpected, shape errors)."""
    want = target.state_dict()
    if "_conv_stem.weight" in sd:
        sd = _from_lukemelas(sd, want)
    mapped, unexpected = {}, []
    by_suffix = {k.split(".", 1)[-1]: k for k in want}  # e.g. timm wrapper "model.x" <- "x"
    for k, v in sd.items():
        if k in want:
            mapped[k] = v
        elif f"model.{k}" in want:
            mapped[f"model.{k}"] = v
        elif k.startswith(_CLASSIFIER_PREFIXES):
            continue
        elif k in by_suffix and by_suffix[k] not in sd:
            mapped[by_suffix[k]] = v
        elif "." in k and k.split(".", 1)[1] in want:  # a whole model's sub-module, e.g. torchvision VGG's features.
            mapped[k.split(".", 1)[1]] = v
        else:
            unexpected.append(prefix + k)
    new = getattr(target, "new_keys", ())
    missing = [prefix + k for k in want if k not in mapped and not k.endswith("num_batches_tracked") and k not in new]
    shapes = [f"{prefix}{k}: file {tuple(v.shape)} vs model {tuple(want[k].shape)}"
              for k, v in mapped.items() if v.shape != want[k].shape]
    return mapped, missing, unexpected, shapes


def load_weights(model: nn.Module, path: str | os.PathLike) -> str:
    """Load a local state dict into a Backbone (whole model, or its body only); returns the file's sha256.

    Mismatched keys or shapes raise WeightsError listing them.
    """
    sd = read_state_dict(path)
    if any(k.startswith(("body.", "head.")) for k in sd):
        target, prefix = model, ""
    else:
        target, prefix = model.body, "body."
    mapped, missing, unexpected, shapes = _match(target, sd, prefix)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {missing[:8]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {unexpected[:8]}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {shapes[:8]}")
    if problems:
        raise WeightsError(f"{path}: weights do not fit backbone {model.name}: " + "; ".join(problems))
    target.load_state_dict(mapped, strict=False)
    return sha256_file(path)
