"""The README stays one screen, its numbers are what bench/results/*.json give, and its quick start runs."""
import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block(section: str, lang: str) -> str:
    """The first code block of a language in a README section."""
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(rf"```{lang}\n(.*?)```", body, re.S).group(1)


def test_the_readme_is_one_screen_and_links_into_the_docs():
    assert len(README.splitlines()) <= 150
    for link in re.findall(r"\]\((docs/[^)#]+)\)", README):
        assert (ROOT / link).is_file(), link


def test_results_are_what_the_results_files_give():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "docs_results.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_the_quick_start_runs_on_face_crops(tmp_path):
    """The quick start's `predict` lines and its Python, on face crops (scikit-image's astronaut, cropped 4 ways)."""
    from PIL import Image
    from skimage import data

    from genderfusion.extract.faces import faceres

    if faceres.missing_files("faceres-deep"):
        pytest.skip("the default model needs FaceRes: fetch-faceres (.ci/run fetches it)")
    (tmp_path / "photos").mkdir()
    photos = []
    for k, (left, top) in enumerate([(150, 20), (160, 30), (140, 25), (155, 15)]):
        photos.append(tmp_path / "photos" / f"face{k}.jpg")
        Image.fromarray(data.astronaut()[top:top + 200, left:left + 200]).save(photos[-1])
    shutil.copytree(tmp_path / "photos", tmp_path / "crops")
    for name in ("photo.jpg", "party.jpg", "crop1.jpg", "crop2.jpg"):
        shutil.copy(photos[0], tmp_path / name)
    lines = [line.split("#")[0].strip() for line in _block("Quick start", "bash").splitlines()]
    commands = [line.replace("~/photos", "photos") for line in lines if line.startswith("predict ")]
    assert len(commands) == 3
    for command in commands:
        r = subprocess.run([sys.executable, "-m", "genderfusion", *command.split(),
                            "--no-progress"], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0, (command, r.stderr[-2000:])
    rows = list(csv.DictReader(open(tmp_path / "faces.csv")))
    assert len(rows) == 4 and {r["rule"] for r in rows} <= {"fills-photo", "crop-like", "detected"}
    assert len(list((tmp_path / "drawn").glob("*.jpg"))) == 4
    code = _block("Quick start", "python")
    r = subprocess.run([sys.executable, "-c", code + "\nprint(len(faces), labels.tolist())"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[0] == "1"
