"""The workspace folder (default data/): it owns every path of what is generated, and every file name."""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from genderfusion.files.atomic import write_json
from genderfusion.files.json_files import read_json

from ..errors import WorkspaceError
from .dataset import CompetitionData


NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\Z")


def check_name(name: str, what: str = "model name") -> str:
    """A name the user gives to something saved under the workspace: one path component (letters, digits, '.',
    '_', '-', not starting with '.'), so that nothing outside its own folder is ever written or removed."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"{what} {name!r}: use one path component of letters, digits, '.', '_' and '-', not "
                         "starting with '.'")
    return name


def safe_name(name: str) -> str:
    """The one sanitiser of source, backbone and model names used as file names ('timm:a/b' -> 'timm_a_b')."""
    return name.replace(":", "_").replace("/", "_")


@dataclass(frozen=True)
class FoldFiles:
    """The files train-backbone writes for fold k of one backbone."""

    root: Path
    k: int

    def _file(self, suffix: str) -> Path:
        return self.root / f"fold{self.k}{suffix}"

    @property
    def best(self) -> Path:
        """Best checkpoint (lowest inner-validation loss)."""
        return self._file(".pt")

    @property
    def last(self) -> Path:
        """Resume state after the last finished epoch."""
        return self._file(".last.pt")

    @property
    def config(self) -> Path:
        return self._file(".config.json")

    @property
    def history(self) -> Path:
        return self._file(".history.csv")

    @property
    def curve(self) -> Path:
        return self._file(".curve.png")

    @property
    def oof(self) -> Path:
        """Logits of the fold model on its held-out rows."""
        return self._file(".oof.csv")

    @property
    def done(self) -> Path:
        """Metadata of a finished fold: sha256, out-of-fold accuracy, preprocessing …"""
        return self._file(".json")


class Workspace:
    """Paths of one workspace, bound to exactly one dataset by its fingerprint."""

    def __init__(self, root: str | os.PathLike = "data"):
        self.root = Path(root)

    @property
    def info_path(self) -> Path:
        return self.root / "workspace.json"

    def bind(self, data: CompetitionData, record: bool = True) -> str:
        """Record the training set's fingerprint, or refuse if the workspace holds another training set (with
        record=False only the check: a run records its data folder once it has succeeded).

        A workspace belongs to one set of training ids; test ids may be added, and labels or images corrected
        (caches recompute the changed rows; fold models trained on other labels or images are refused by name).
        Returns the fingerprint of the training set with its labels and image sizes.
        """
        for split in (data.train, data.test):
            split.digest_cache = self.root / "cache" / "digests" / f"{split.name}.npz"
        fp = data.fingerprint(("train",))
        ids = hashlib.sha256("\n".join(data.train.ids).encode()).hexdigest()[:16]
        info = read_json(self.info_path) if self.info_path.exists() else {}
        theirs = info.get("ids_fingerprint")
        if info and theirs != ids and not (theirs is None and info.get("dataset_fingerprint") == fp):
            raise WorkspaceError(
                f"workspace {self.root} was made for another training set "
                f"(fingerprint {theirs or info.get('dataset_fingerprint')}, data {info.get('data')}); "
                f"{data.root} has fingerprint {ids}. Use another workspace.")
        content = data.fingerprint(("train",), content=True)
        # what the fold models are checked against in this process
        self._bound = {"dataset_fingerprint": fp, "content_fingerprint": content}
        if record:
            if (info.get("dataset_fingerprint"), info.get("content_fingerprint"), theirs) != (fp, content, ids):
                write_json(self.info_path, {"dataset_fingerprint": fp, "ids_fingerprint": ids,
                                            "content_fingerprint": content, "data": str(data.root.resolve())})
        return fp

    def check_training_rows(self, ids: list[str], labels: list[int], sizes: list[int], what: str) -> None:
        """Refuse training rows (ids, labels, image sizes in dataset order) other than the ones this workspace was
        last bound to (what its data folder held: checked without the folder)."""
        from .dataset import hash_rows

        theirs = self.dataset_fingerprint()
        h = hashlib.sha256()
        hash_rows(h, "train", ids, labels, sizes)
        ours = h.hexdigest()[:16]
        if theirs is not None and theirs != ours:
            raise WorkspaceError(f"{what} holds other training rows (ids, labels or image sizes; fingerprint {ours}) "
                                 f"than workspace {self.root} was made for ({theirs}, {self.bound_data_path()}); "
                                 "rerun `extract` in this workspace")

    def bound_data_path(self) -> str | None:
        """The data folder the workspace was last bound to, as recorded (it may be gone)."""
        return read_json(self.info_path).get("data") if self.info_path.exists() else None

    def _fingerprint(self, key: str) -> str | None:
        bound = getattr(self, "_bound", None)
        if bound is not None:
            return bound[key]
        return read_json(self.info_path).get(key) if self.info_path.exists() else None

    def content_fingerprint(self) -> str | None:
        """The fingerprint of the training set the workspace is bound to (in this process, else as last recorded),
        with its images' contents."""
        return self._fingerprint("content_fingerprint")

    def dataset_fingerprint(self) -> str | None:
        """The fingerprint (ids, labels, image sizes) of the training set the workspace is bound to (in this
        process, else as last recorded)."""
        return self._fingerprint("dataset_fingerprint")

    def bound_data(self) -> CompetitionData | None:
        """The competition folder this workspace was made for, if it is still readable (no image checks)."""
        if not self.info_path.exists():
            return None
        try:
            return CompetitionData.load(read_json(self.info_path)["data"], check_images=False)
        except Exception:  # moved or deleted data: callers go on without it
            return None

    @property
    def folds_path(self) -> Path:
        return self.root / "folds.csv"

    def model_dir(self, backbone: str) -> Path:
        return self.root / "models" / safe_name(backbone)

    def fold_files(self, backbone: str, k: int) -> FoldFiles:
        return FoldFiles(self.model_dir(backbone), k)

    def features_path(self, source: str) -> Path:
        return self.root / "features" / f"{safe_name(source)}.h5"

    def shard_path(self, source: str, i: int, n: int) -> Path:
        return self.root / "features" / f"{safe_name(source)}.shard{i}of{n}.h5"

    def shard_paths(self, source: str) -> list[Path]:
        return sorted((self.root / "features").glob(f"{safe_name(source)}.shard*of*.h5"))

    def image_cache(self, split: str, size: int) -> Path:
        return self.root / "cache" / "images" / f"{split}_{size}.npy"

    def chip_cache(self, split: str, size: int, padding: float) -> Path:
        """Aligned face chips of a split (landmarks computed once per chip size and padding)."""
        return self.root / "cache" / "chips" / f"{split}_{size}_p{padding}.npy"

    def trunk_cache(self, split: str, backbone: str, cut: str, views: int = 2) -> Path:
        """Activations of a frozen trunk (below `cut`) on a split's images, their mirrors and (views > 2)
        augmented copies."""
        suffix = "" if views == 2 else f"_v{views}"
        return self.root / "cache" / "trunk" / f"{split}_{safe_name(backbone)}_{cut}{suffix}.npy"

    def head_dir(self, name: str) -> Path:
        return self.root / "heads" / check_name(name)

    def head_model(self, name: str) -> Path:
        return self.head_dir(name) / "model.safetensors"
