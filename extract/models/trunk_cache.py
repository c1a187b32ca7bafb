"""Activations of a frozen trunk cached on disk: a pretrained face network below its cut (the face ResNet on
aligned chips, FaceRes on plainly resized images), run once per image and its mirror, then reused by every fold,
epoch and re-run of the training above the cut."""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import torch

from ..data.dataset import CompetitionData
from ..data.image_cache import cached_array, cached_images
from ..data.workspace import Workspace
from .augment import AugmentConfig, augment, normalize, to_float
from .backbone import Backbone
from ..faces.chip_cache import cached_chips
from ..faces.face_files import SHAPE_PREDICTOR, checked_sha256, dlib_model_paths
from .inference import prepare, step_size
from .registry import lookup

log = logging.getLogger(__name__)


@torch.inference_mode()
def trunk_activations(model: Backbone, chips: np.ndarray, cut: str, device: torch.device, mirror: bool = True,
                      dtype=np.float16, progress: bool = False, desc: str = "trunk", views: int = 2,
                      augment_cfg: AugmentConfig | None = None, seed: int = 0) -> np.ndarray:
    """[N, V, C, H, W]: the trunk below `cut` on uint8 chips [N, S, S, 3] (view 0) and, with mirror, on their
    mirrors (view 1); views beyond 2 are augmented copies (augment_cfg: rotation, brightness, contrast, grayscale,
    mirror), drawn from a generator seeded with seed + view."""
    from tqdm.auto import tqdm

    model.eval().to(device)
    n_views = views if mirror else 1
    out = np.empty((len(chips), n_views, *model.body.cut_shapes[cut]), dtype=dtype)
    gens = {v: torch.Generator().manual_seed(seed * 1000 + v) for v in range(2, n_views)}
    cfg = augment_cfg or AugmentConfig()
    trunk = _trunk(model, cut, device)
    step = step_size(256, device)
    with tqdm(total=len(chips), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(chips), step):
            batch = np.require(chips[start:start + step], requirements=("C", "W"))  # a memory map is read-only
            for view in range(n_views):
                if view < 2:
                    x = prepare(batch if view == 0 else batch[:, :, ::-1], model, device)
                else:
                    x = augment(to_float(torch.from_numpy(batch).to(device)), cfg, gens[view])
                    x = normalize(x, model.preprocess.mean, model.preprocess.std).contiguous(
                        memory_format=torch.channels_last)
                out[start:start + len(batch), view] = trunk(x).float().cpu().numpy()
            bar.update(len(batch))
    return out


def _trunk(model: Backbone, cut: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The trunk below the cut: on onnxruntime where the body offers it on CPU (FaceRes), else in torch."""
    fast = getattr(model.body, "onnx_trunk", None)
    run = fast(cut) if fast is not None and device.type == "cpu" else None
    return run or (lambda x: model.body.trunk(x, cut))


def cached_trunk(ws: Workspace, data: CompetitionData, split: str, model: Backbone, cut: str, weights_sha256: str,
                 skip_bad: bool = False, progress: bool = True, device: torch.device | None = None, views: int = 2,
                 augment_cfg: AugmentConfig | None = None, seed: int = 0) -> tuple[np.ndarray, list[int], dict]:
    """The trunk activations of a split (memory-mapped), the indices of corrupt images and the cache's metadata
    (its size in bytes and the seconds it took). Rebuilt when the images, the weights, the cut, the chip recipe or
    the augmented views change."""
    pre = model.preprocess
    padding = lookup(model.name).chip_padding
    inputs: dict = {"chip": pre.img_size, "padding": padding}
    if padding is None:
        chips, bad = cached_images(ws, data, split, pre.img_size, skip_bad=skip_bad, progress=progress)
        fallbacks = 0
    else:
        inputs["shape_predictor_sha256"] = checked_sha256("dlib-face")["shape_predictor"]
        chips, bad, fallbacks = cached_chips(ws, data, split, pre.img_size, padding,
                                             str(dlib_model_paths()[SHAPE_PREDICTOR]),
                                             inputs["shape_predictor_sha256"], skip_bad, progress)

    def build() -> tuple[np.ndarray, dict]:
        t0 = time.time()
        acts = trunk_activations(model, chips, cut, device or torch.device("cpu"), progress=progress,
                                 desc=f"trunk {split}@{cut}", views=views, augment_cfg=augment_cfg, seed=seed)
        return acts, {"bad": bad, "seconds": round(time.time() - t0, 1), "bytes": int(acts.nbytes)}

    key = {"dataset_fingerprint": data.fingerprint(labels=False, content=True), "ids_n": len(getattr(data, split)),
           "weights_sha256": weights_sha256, "cut": cut, **inputs, "mean": list(pre.mean), "std": list(pre.std)}
    if views > 2:  # caches of the two plain views keep their key
        key.update(views=views, augment=(augment_cfg or AugmentConfig()).as_dict(), seed=seed)
    acts, meta = cached_array(ws.trunk_cache(split, model.name, cut, views), key, getattr(data, split).paths, build,
                              skip_bad, "trunk cache")
    log.info("trunk cache %s: %.0f MB, built in %s s; %d chips fell back to a plain resize", split,
             meta["bytes"] / 1e6, meta["seconds"], fallbacks)
    return acts, list(meta["bad"]), meta
