"""The images a source computes on (its Input): plainly resized images or aligned face chips, for rows of a
competition folder (from the on-disk caches) or for images in memory (FusionClassifier)."""
from __future__ import annotations

import numpy as np

from ..data.dataset import CompetitionData
from ..data.image_cache import cached_images
from ..data.images import resize_all
from ..data.workspace import Workspace
from ..faces.chip_cache import cached_chips
from ..faces.face_files import DLIB_FILES, SHAPE_PREDICTOR, dlib_model_paths
from ..faces.face_nets import Aligner
from .base import Input



class RowInputs:
    """Batches of a competition folder's rows for a source's Input, from the image or chip cache (built once).

    Corrupt images skipped with --skip-bad are black; `bad[split]` lists them and `fallbacks` counts the chips
    whose landmarks were implausible (plain resize instead)."""

    def __init__(self, ws: Workspace, data: CompetitionData, skip_bad: bool = False, progress: bool = True):
        self.ws, self.data, self.skip_bad, self.progress = ws, data, skip_bad, progress
        self.bad: dict[str, set[int]] = {"train": set(), "test": set()}
        self.fallbacks: dict[tuple[str, Input], int] = {}
        self._arrays: dict[tuple[str, Input], np.ndarray] = {}

    def all(self, split: str, inp: Input) -> np.ndarray:
        """Every row of a split (memory-mapped)."""
        if (split, inp) not in self._arrays:
            if inp.padding is None:
                arr, bad = cached_images(self.ws, self.data, split, inp.size, skip_bad=self.skip_bad,
                                         progress=self.progress)
            else:
                sp = dlib_model_paths()[SHAPE_PREDICTOR]
                arr, bad, fell = cached_chips(self.ws, self.data, split, inp.size, inp.padding, str(sp),
                                              DLIB_FILES[SHAPE_PREDICTOR], skip_bad=self.skip_bad,
                                              progress=self.progress)
                self.fallbacks[split, inp] = fell
            self._arrays[split, inp] = arr
            self.bad[split].update(bad)
        return self._arrays[split, inp]

    def __call__(self, split: str, rows: np.ndarray, inp: Input) -> np.ndarray:
        return self.all(split, inp)[rows]


class MemoryInputs:
    """A source's Input for decoded HWC RGB images in memory; each view is made once, the aligner loaded once."""

    def __init__(self):
        self._aligners: dict[Input, Aligner] = {}

    def __call__(self, arrays: list[np.ndarray], inp: Input) -> np.ndarray:
        if inp.padding is None:
            return resize_all(arrays, inp.size)
        if inp not in self._aligners:
            self._aligners[inp] = Aligner(str(dlib_model_paths()[SHAPE_PREDICTOR]), inp.size, inp.padding)
        return self._aligners[inp](arrays)[0]
