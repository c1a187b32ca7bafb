"""The model card: valid HTML, decodable embedded images, numbers equal to report.json, a headless render."""
import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from genderfusion.files.json_files import read_json
from genderfusion.fusion.training.card import calibration, wilson, write_card
from genderfusion.fusion.training.train_head import HeadTraining, train_head

VOID = {"meta", "img", "br", "hr", "input", "link"}


class Checker(HTMLParser):
    """Every element closed in order; collects img sources and the attributes of the group rows."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images, self.groups = [], [], [], {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if tag == "tr" and "data-group" in a:
            self.groups[a["data-group"]] = float(a["data-accuracy"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()


@pytest.fixture(scope="module")
def head(synth_master, tmp_path_factory, cnn_small_workspace):
    ws = cnn_small_workspace(synth_master, tmp_path_factory.mktemp("card") / "ws")
    train_head(ws, HeadTraining(["cnn-small"], ["logistic"], name="mine"), log=lambda m: None)
    return ws, ws / "heads" / "mine"


def test_the_card_is_valid_html_with_decodable_images_and_the_reports_numbers(head):
    ws, out = head
    page = (out / "card.html").read_text()
    c = Checker()
    c.feed(page)
    assert not c.errors and c.stack == [], (c.errors, c.stack)
    assert len(c.images) >= 4 + 1  # four plots and at least one face
    for src in c.images:
        kind, data = re.match(r"data:image/(png|jpeg);base64,(.*)", src).groups()
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.load()
    report = read_json(out / "report.json")
    assert re.search(rf'id="cv-accuracy">{report["best_cv_accuracy"]:.4f}<', page)
    chosen = report["chosen"]
    for group, value in chosen["groups"].items():
        assert abs(c.groups[group] - value) <= 1e-5, group
    assert abs(c.groups["all"] - chosen["accuracy"]) <= 1e-5
    assert "http://" not in page and "https://" not in page  # self-contained


def test_interval_and_calibration_formulas():
    lo, hi = wilson(90, 100)
    assert abs(lo - 0.8256) < 1e-3 and abs(hi - 0.9448) < 1e-3  # the textbook Wilson interval
    y = np.array([0, 0, 1, 1])
    bins, ece = calibration(y, np.array([0.05, 0.05, 0.95, 0.95]))
    assert abs(ece - 0.05) < 1e-9 and [b["n"] for b in bins] == [2, 2]


def test_the_card_renders_in_headless_chromium(head, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium absent: apt-get install -y chromium (see the README)")
    _, out = head
    shot = tmp_path / "card.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1100,1400", (out / "card.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    with Image.open(shot) as im:
        assert im.size == (1100, 1400)
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # something was drawn, not a blank page


def test_write_card_refreshes_with_speed(head):
    ws, out = head
    write_card(out, ws, speed={"predict img/s": 123.4})
    assert "predict img/s" in (out / "card.html").read_text()
