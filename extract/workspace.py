"""The workspace folder (default data/): where folds, caches, checkpoints and features live."""
from __future__ import annotations

import os
from pathlib import Path

from .atomic import read_json, write_json
from .dataset import CompetitionData
from .errors import WorkspaceError


class Workspace:
    """Paths of one workspace, bound to exactly one dataset by its fingerprint."""

    def __init__(self, root: str | os.PathLike = "data"):
        self.root = Path(root)

    @property
    def info_path(self) -> Path:
        return self.root / "workspace.json"

    def bind(self, data: CompetitionData) -> str:
        """Record the training set's fingerprint, or refuse if the workspace holds another dataset.

        A workspace belongs to one training set (ids, labels, image sizes); test ids may be added.
        """
        fp = data.fingerprint(("train",))
        if self.info_path.exists():
            info = read_json(self.info_path)
            if info.get("dataset_fingerprint") != fp:
                raise WorkspaceError(
                    f"workspace {self.root} was made for another dataset "
                    f"(fingerprint {info.get('dataset_fingerprint')}, data {info.get('data')}); "
                    f"{data.root} has fingerprint {fp}. Use another --workdir."
                )
        else:
            write_json(self.info_path, {"dataset_fingerprint": fp, "data": str(data.root.resolve())})
        return fp

    def model_dir(self, source: str) -> Path:
        return self.root / "models" / source.replace(":", "_").replace("/", "_")

    def features_path(self, source: str) -> Path:
        return self.root / "features" / f"{source.replace(':', '_').replace('/', '_')}.h5"

    def image_cache(self, split: str, size: int) -> Path:
        return self.root / "cache" / "images" / f"{split}_{size}.npy"

    @property
    def folds_path(self) -> Path:
        return self.root / "folds.csv"
