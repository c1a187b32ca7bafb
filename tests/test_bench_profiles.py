"""The benchmark profiles are readable and produce commands the CLIs accept (dry run: nothing is executed)."""
import importlib.util
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
bench_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_run)


@pytest.mark.parametrize("profile", ["cpu", "gpu", "demo"])
def test_profile_dry_run_commands_parse(profile, tmp_path, monkeypatch, capsys):
    from genderfusion.extract import cli as ecli
    from genderfusion.fusion import cli as fcli

    data = tmp_path / "faces"
    (data).mkdir()
    out = bench_run.main(["--profile", profile, "--data", str(data), "--workdir", str(tmp_path / "ws"),
                          "--dry-run"])
    parsers = {"train-backbone": ecli.train_backbone_main, "extract": ecli.extract_main,
               "train-head": fcli.train_head_main, "predict": fcli.predict_main}
    seen = set()
    for stage in out["stages"]:
        argv = shlex.split(stage["command"])
        if argv[0] in parsers:
            seen.add(argv[0])
            # parse the arguments (an unknown option exits with an error), but run nothing
            monkeypatch.setattr(ecli, "run_cli", lambda body: None)
            monkeypatch.setattr(fcli, "run_cli", lambda body: None)
            parsers[argv[0]](argv[1:])
    assert seen == set(parsers)
    assert not (tmp_path / "ws").exists()  # a dry run writes nothing


@pytest.mark.parametrize("profile", ["cpu", "gpu", "demo"])
def test_every_fine_tuned_source_of_a_profile_is_trained_first(profile):
    """A fine-tuned source needs its fold checkpoints: its backbone must be in the profile's train list."""
    from genderfusion.extract.sources.spec import source_spec

    prof = bench_run.load_profile(profile)
    trained = {t["backbone"] for t in prof["train"]}
    for e in prof["extract"]:
        s = source_spec(e["backbone"], bool(e.get("frozen")), e.get("pool"), tta=e.get("tta"))
        assert s["type"] != "finetuned" or e["backbone"] in trained, (profile, e)


@pytest.mark.parametrize("profile", ["cpu", "gpu", "demo"])
def test_a_profile_needs_no_model_hub(profile):
    """The benchmark machines are offline: no backbone of a profile asks for hub weights (--pretrained)."""
    prof = bench_run.load_profile(profile)
    for e in prof["train"] + prof["extract"]:
        assert not e.get("pretrained"), (profile, e)
