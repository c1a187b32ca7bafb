"""Batched inference of a Backbone on uint8 images: logits and pooled last-conv features."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import numpy as np
import torch

from genderfusion.option_errors import option_error

from .augment import normalize, to_float
from .backbone import Backbone
from .registry import POOLS


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; asking for CUDA without it is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise option_error(ValueError, "device", f"{device!r}: not a device ({exc}); use auto, cpu, cuda or "
                                                 "cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise option_error(ValueError, "device", f"{device}: no CUDA device is available here; use auto or cpu")
    return dev


def autocast(device: torch.device):
    """bfloat16 autocast on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pool_features(fmap: torch.Tensor, pool: str) -> torch.Tensor:
    """Reduce a [B, C, H, W] map to [B, D]."""
    if pool == "flatten":
        return fmap.flatten(1)
    if pool == "avg":
        return fmap.mean(dim=(2, 3))
    if pool == "max":
        return fmap.amax(dim=(2, 3))
    if pool == "avgmax":
        return torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)
    raise ValueError(f"unknown pooling {pool!r}; choose one of {POOLS}")


def feature_dim(model: Backbone, pool: str) -> int:
    h, w = model.feature_hw
    return {"flatten": model.num_features * h * w, "avgmax": 2 * model.num_features}.get(pool, model.num_features)


CPU_BATCH = 32  # on CPU, channels-last batches of 32 run fastest (cnn-deep at 64 px: 796 img/s, 424 at 256)


def step_size(batch_size: int, device: torch.device) -> int:
    """The batch a forward pass gets: batch_size on CUDA, at most CPU_BATCH on CPU."""
    return batch_size if device.type == "cuda" else min(batch_size, CPU_BATCH)


def prepare(batch_u8: np.ndarray | torch.Tensor, model: Backbone, device: torch.device) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> normalised float [B, 3, H, W] on device, channels-last."""
    if isinstance(batch_u8, np.ndarray):
        batch_u8 = np.require(batch_u8, requirements=("C", "W"))  # memory-mapped caches are read-only
    t = torch.as_tensor(batch_u8).to(device, non_blocking=True)
    x = normalize(to_float(t), model.preprocess.mean, model.preprocess.std)
    return x.contiguous(memory_format=torch.channels_last)


def iter_batches(images: np.ndarray, indices: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), batch_size):
        yield images[indices[start:start + batch_size]]


def _resolve(device: torch.device | str) -> torch.device:
    return torch.device(device) if isinstance(device, str) else device


@torch.inference_mode()
def _run(model: Backbone, inputs: Iterator[torch.Tensor], n: int, features: Callable[[torch.Tensor], torch.Tensor],
         device: torch.device, pool: str | None, progress: bool, desc: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits [n] and, when pool is given, pooled features [n, D] of model inputs given batch by batch;
    features(x) is the last conv map of one batch."""
    from tqdm.auto import tqdm

    model.eval().to(device)
    logits = np.empty(n, dtype=np.float32)
    feats = None
    pos = 0
    with tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
        for x in inputs:
            with autocast(device):
                fmap = features(x)
                out = model.forward_head(fmap)
            b = len(x)
            logits[pos:pos + b] = out.float().cpu().numpy()
            if pool is not None:
                f = pool_features(fmap.float(), pool).cpu().numpy()
                if feats is None:
                    feats = np.empty((n, f.shape[1]), dtype=np.float32)
                feats[pos:pos + b] = f
            pos += b
            bar.update(b)
    return logits, feats


def infer(model: Backbone, images: np.ndarray, indices: np.ndarray, batch_size: int = 256,
          device: torch.device | str = "cpu", pool: str | None = None, progress: bool = False,
          desc: str = "infer") -> tuple[np.ndarray, np.ndarray | None]:
    """Logits [N] and, when pool is given, features [N, D] for uint8 images[indices]."""
    device = _resolve(device)
    inputs = (prepare(b, model, device) for b in iter_batches(images, indices, step_size(batch_size, device)))
    return _run(model, inputs, len(indices), model.forward_features, device, pool, progress, desc)


def infer_above(model: Backbone, acts: np.ndarray, cut: str, batch_size: int = 256,
                device: torch.device | str = "cpu", pool: str | None = None, progress: bool = False,
                desc: str = "infer") -> tuple[np.ndarray, np.ndarray | None]:
    """Logits [N] and, when pool is given, features [N, D] of the blocks above `cut` on the activations [N, C, H, W]
    of the frozen trunk below it."""
    device = _resolve(device)
    step = step_size(batch_size, device)
    inputs = (torch.from_numpy(np.ascontiguousarray(acts[i:i + step])).to(device).float()
              for i in range(0, len(acts), step))
    return _run(model, inputs, len(acts), lambda x: model.body.top(x, cut), device, pool, progress, desc)
