"""The benchmark profiles are readable and produce commands the CLIs accept (dry run: nothing is executed)."""
import importlib.util
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
bench_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_run)


@pytest.mark.parametrize("profile", ["cpu", "cpu-short", "gpu", "demo"])
def test_profile_dry_run_commands_parse(profile, tmp_path, monkeypatch, capsys):
    from genderfusion.cli import extract_commands as ecli
    from genderfusion.cli import model_commands as fcli
    from genderfusion.cli import predict_command as pcli

    data = tmp_path / "faces"
    (data).mkdir()
    out = bench_run.main(["--profile", profile, "--data", str(data), "--workdir", str(tmp_path / "ws"),
                          "--dry-run"])
    parsers = {"train-backbone": ecli.train_backbone_main, "extract": ecli.extract_main,
               "train-head": fcli.train_head_main, "predict": pcli.predict_main}
    seen = set()
    for stage in out["stages"]:
        argv = shlex.split(stage["command"])
        if argv[0] in parsers:
            seen.add(argv[0])
            # parse the arguments (an unknown option exits with an error), but run nothing
            monkeypatch.setattr(ecli, "run_cli", lambda body, *a, **kw: None)
            monkeypatch.setattr(fcli, "run_cli", lambda body, *a, **kw: None)
            monkeypatch.setattr(pcli, "run_cli", lambda body, *a, **kw: None)
            parsers[argv[0]](argv[1:])
    assert seen == set(parsers)
    assert not (tmp_path / "ws").exists()  # a dry run writes nothing


@pytest.mark.parametrize("profile", ["cpu", "cpu-short", "gpu", "demo"])
def test_a_profiles_cascade_runs_on_sources_it_extracts(profile):
    prof = bench_run.load_profile(profile)
    extracted = [bench_run.extract_args(e)[1] for e in prof["extract"]]
    assert set(prof.get("cascade", [])) <= set(extracted), (prof.get("cascade"), extracted)


@pytest.mark.parametrize("profile", ["cpu", "cpu-short", "gpu", "demo"])
def test_every_fine_tuned_source_of_a_profile_is_trained_first(profile):
    """A fine-tuned source needs its fold checkpoints: its backbone must be in the profile's train list."""
    from genderfusion.extract.sources.spec import source_spec

    prof = bench_run.load_profile(profile)
    trained = {t["backbone"] for t in prof["train"]}
    for e in prof["extract"]:
        s = source_spec(e["backbone"], bool(e.get("frozen")), e.get("pool"), tta=e.get("tta"))
        assert s["type"] != "finetuned" or e["backbone"] in trained, (profile, e)


@pytest.mark.parametrize("profile", ["cpu", "cpu-short", "gpu", "demo"])
def test_a_profile_needs_no_model_hub(profile):
    """The benchmark machines are offline: no backbone of a profile asks for hub weights (--pretrained)."""
    prof = bench_run.load_profile(profile)
    for e in prof["train"] + prof["extract"]:
        assert not e.get("pretrained"), (profile, e)


@pytest.mark.parametrize("path", ["as it is", "python only"])
def test_a_profile_with_missing_model_files_fails_before_its_first_stage(path, tmp_path):
    """The cpu profile on an empty model cache and no network (HTTPS through a proxy that is not there): exit 2
    within seconds, naming `fetch-faceres`, having created no workspace; Node.js plays no part (PATH may hold only
    Python's folder)."""
    import os
    import subprocess
    import sys
    import time

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), HTTPS_PROXY="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9")
    env.pop("GENDERFUSION_FACERES_DIR", None)
    env.pop("NO_PROXY", None), env.pop("no_proxy", None)
    if path == "python only":
        env["PATH"] = os.path.dirname(sys.executable)
    (tmp_path / "faces").mkdir()
    t = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--profile", "cpu", "--data",
                           str(tmp_path / "faces"), "--workdir", str(tmp_path / "ws")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: profile 'cpu', before its first stage: FaceRes model files missing")
    assert "cannot download https://registry.npmjs.org/" in last and "`fetch-faceres`" in last
    assert time.time() - t < 30 and not (tmp_path / "ws").exists()


def test_the_preflight_names_a_corrupt_packaged_model_file(tmp_path, monkeypatch):
    """A FaceRes file with another sha256 is refused before any stage, with the file and the sha256 expected."""
    import hashlib

    from genderfusion.extract.errors import WeightsError
    from genderfusion.extract.faces import faceres
    from genderfusion.extract.sources.preflight import ensure_model_files
    from genderfusion.extract.sources.spec import source_spec

    monkeypatch.setenv("GENDERFUSION_FACERES_DIR", str(tmp_path))
    for name in ("faceres-deep.json", "faceres-deep.bin"):
        (tmp_path / name).write_bytes(b"not the model")
    with pytest.raises(WeightsError, match=r"faceres-deep-pooling-flip: .*faceres-deep.json: corrupted model file \(sha256 "
                                           + hashlib.sha256(b"not the model").hexdigest()
                                           + ", expected " + faceres.FILES["faceres-deep.json"]
                                           + r"\); fetch it again with `fetch-faceres`"):
        ensure_model_files([source_spec("faceres-deep", layer="pooling")], fetch=False)
