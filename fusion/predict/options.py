"""How photos are predicted: one options object, built once by the CLI, by `serve` or by the Python API."""
from __future__ import annotations

from dataclasses import dataclass

from genderfusion.extract.faces.detect import DEFAULT_DETECTOR, MIN_FACE
from genderfusion.heads.schema import band_spec

from genderfusion.fusion.photos.faces import check_face_options
from genderfusion.fusion.photos.finder import FaceFinder


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} {value!r}: a positive integer")


@dataclass(frozen=True)
class PhotoOptions:
    """faces auto|detect|whole, the detector, min_face pixels; band, the doubtful band of P(female) (None: the
    model's); batch_size, faces classified at once (and photo files read per step); device; cascade (False: every
    source on every face); skip_bad, an unreadable photo is a row with its error (False: an error that stops the
    run); workers, processes that decode photo files and find their faces."""
    faces: str = "auto"
    detector: str = DEFAULT_DETECTOR
    min_face: int = MIN_FACE
    band: tuple[float, float] | None = None
    batch_size: int = 256
    device: str = "auto"
    cascade: bool = True
    skip_bad: bool = True
    workers: int = 1

    def __post_init__(self):
        check_face_options(self.faces, self.detector, self.min_face)
        _positive("batch_size", self.batch_size)
        _positive("workers", self.workers)
        if self.band is not None:
            band_spec(list(self.band), "band")
            object.__setattr__(self, "band", (float(self.band[0]), float(self.band[1])))
        if not isinstance(self.device, str):
            raise ValueError(f"device {self.device!r}: a name such as auto, cpu, cuda or cuda:1")

    def band_of(self, clf) -> tuple[float, float]:
        """The doubtful band: this one, else the model's."""
        return tuple(clf.band) if self.band is None else self.band

    def finder(self) -> FaceFinder:
        """A face finder with these options (its workers live until its close())."""
        return FaceFinder(self.faces, self.detector, self.min_face, self.workers, self.device)
