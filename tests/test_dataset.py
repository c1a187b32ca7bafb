import numpy as np
import pytest
from PIL import Image

from genderfusion.extract.data.dataset import CompetitionData
from genderfusion.extract.errors import BadImageError, DataError
from genderfusion.extract.data.images import decode_many, load_rgb


def test_loads_valid_folder(synth):
    d = CompetitionData.load(synth)
    assert len(d.train) == 60 and len(d.test) == 12
    assert set(np.unique(d.train.labels)) <= {0, 1}
    assert d.ages() is not None and (d.ages() >= 0).all()


def test_missing_column_names_file_and_columns(synth):
    (synth / "train.csv").write_text("id,gender\n100000,1\n")
    with pytest.raises(DataError, match=r"train.csv: missing column\(s\) \['label'\]"):
        CompetitionData.load(synth)


def test_unknown_label_names_the_row(synth):
    text = (synth / "train.csv").read_text().replace("100003,", "100003,x", 1)
    (synth / "train.csv").write_text(text)
    with pytest.raises(DataError, match=r"100003"):
        CompetitionData.load(synth)


def test_duplicate_ids(synth):
    lines = (synth / "train.csv").read_text().splitlines()
    (synth / "train.csv").write_text("\n".join(lines + [lines[5]]) + "\n")
    with pytest.raises(DataError, match=r"duplicate id\(s\) " + lines[5].split(",")[0]):
        CompetitionData.load(synth)


def test_missing_image_is_named(synth):
    (synth / "test" / "200004.jpg").unlink()
    with pytest.raises(DataError, match=r"200004.jpg"):
        CompetitionData.load(synth)


def test_id_in_train_and_test(synth):
    (synth / "test.csv").write_text("id\n100001\n")
    with pytest.raises(DataError, match="also in"):
        CompetitionData.load(synth)


def test_fingerprint_changes_with_labels(synth):
    fp = CompetitionData.load(synth).fingerprint()
    text = (synth / "train.csv").read_text().splitlines()
    i, y = text[1].split(",")
    text[1] = f"{i},{1 - int(y)}"
    (synth / "train.csv").write_text("\n".join(text) + "\n")
    assert CompetitionData.load(synth).fingerprint() != fp


def _mode_case(mode: str) -> tuple[Image.Image, np.ndarray]:
    """An image in `mode` and the RGB pixels expected from it, by a numpy formula of its own channels."""
    rng = np.random.default_rng(0)
    chan = lambda: rng.integers(0, 256, (20, 24), dtype=np.uint8).astype(np.float64)  # noqa: E731
    if mode in ("I;16", "I", "F"):
        v = np.arange(480).reshape(20, 24).astype(np.float64) * 100
        im = Image.fromarray(v.astype(np.uint16)).convert(mode)
        scaled = np.clip(v, 0, 255) if mode == "F" else v / 257  # 16 bits as every library scales them (65535 -> 255)
        return im, np.repeat(scaled[..., None], 3, axis=2)
    if mode in ("L", "1"):
        im = Image.fromarray(chan().astype(np.uint8), "L").convert(mode)
        return im, np.repeat(np.asarray(im, dtype=np.float64)[..., None] * (255 if mode == "1" else 1), 3, axis=2)
    if mode in ("LA", "RGBA"):  # composited on black: colour x alpha / 255
        colour = [chan() for _ in range(1 if mode == "LA" else 3)]
        alpha = chan()
        im = Image.merge(mode, [Image.fromarray(c.astype(np.uint8)) for c in colour + [alpha]])
        return im, np.stack([c * alpha / 255 for c in colour * (3 if mode == "LA" else 1)], axis=2)
    if mode == "P":
        im = Image.fromarray(np.stack([chan() for _ in range(3)], axis=2).astype(np.uint8)).convert("P")
        palette = np.array(im.getpalette(), dtype=np.float64).reshape(-1, 3)
        return im, palette[np.asarray(im)]
    assert mode == "CMYK"
    c, m, y, k = (chan() for _ in range(4))
    im = Image.merge("CMYK", [Image.fromarray(x.astype(np.uint8)) for x in (c, m, y, k)])
    return im, np.stack([(255 - x) * (255 - k) / 255 for x in (c, m, y)], axis=2)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_any_mode_decodes_to_rgb(tmp_path, mode):
    im, expected = _mode_case(mode)
    path = tmp_path / ("x.tiff" if mode in ("I;16", "I", "F", "CMYK", "LA", "RGBA", "1") else "x.png")
    im.save(path)
    arr = load_rgb(path)
    assert arr.shape == (20, 24, 3) and arr.dtype == np.uint8
    assert np.abs(arr - expected).max() <= 1.0, f"{mode}: max difference {np.abs(arr - expected).max()}"
    assert load_rgb(path, size=16).shape == (16, 16, 3)


def test_corrupt_image_is_named_or_skipped(synth):
    bad = synth / "train" / "100007.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    paths = [synth / "train" / f"{100000 + i}.jpg" for i in range(10)]
    with pytest.raises(BadImageError, match=r"100007.jpg.*skip_bad=True"):
        decode_many(paths, 16, progress=False, workers=1)
    arr, badidx = decode_many(paths, 16, skip_bad=True, progress=False, workers=1)
    assert badidx == [7] and arr.shape == (10, 16, 16, 3) and arr[7].max() == 0 and arr[6].max() > 0
