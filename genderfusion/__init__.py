"""genderfusion: gender from face images by stacked fusion of several CNN backbones' features.

The public API is loaded on first use, so that `import genderfusion` (and a cache hit of `extract`) stays
torch-free: `FusionClassifier`, the backbone registry's `create` / `list_backbones`, and `__version__`.
"""
from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("genderfusion")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_API = {"FusionClassifier": "genderfusion.fusion.model.classifier", "create": "genderfusion.extract.models.backbone",
        "list_backbones": "genderfusion.extract.models.registry"}

__all__ = ["FusionClassifier", "create", "list_backbones", "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'genderfusion' has no attribute {name!r}")
