"""One import namespace: the public API, `python -m genderfusion`, version from the package metadata."""
import subprocess
import sys
from importlib.metadata import entry_points, version


def run(code_or_args, cwd):
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd)


def test_public_api_is_lazy_and_torch_free(tmp_path):
    code = ("import sys, genderfusion as g; print(g.__version__, 'torch' in sys.modules); "
            "from genderfusion.fusion.model.classifier import FusionClassifier; "
            "from genderfusion.extract.models.backbone import create; "
            "print(g.FusionClassifier is FusionClassifier, g.create is create, 'cnn-deep' in g.list_backbones())")
    out = run(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [version("genderfusion"), "False", "True", "True", "True"]


def test_python_m_runs_every_console_script(tmp_path):
    scripts = sorted(ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("genderfusion."))
    assert scripts == ["audit-labels", "export-model", "extract", "fetch-faceres", "make-synthetic", "predict",
                       "serve", "train-backbone", "train-head"]
    for name in scripts:
        out = run(["-m", "genderfusion", name, "--version"], tmp_path)
        assert out.returncode == 0 and out.stdout.strip() == f"genderfusion {version('genderfusion')}", out
    out = run(["-m", "genderfusion", "make-synthetic", str(tmp_path / "s"), "--n-train", "4", "--n-test", "2"],
              tmp_path)
    assert out.returncode == 0 and (tmp_path / "s/train/100003.jpg").exists()
    bad = run(["-m", "genderfusion", "nope"], tmp_path)
    assert bad.returncode == 2 and "extract" in bad.stderr and "train-head" in bad.stderr
