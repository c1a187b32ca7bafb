"""Only the console scripts know flags: a library error names the parameter or the value at fault, and the CLI's
one line names the flag (genderfusion.cli.running)."""
from __future__ import annotations

import pytest

from genderfusion.cli import extract_commands, model_commands, predict_command, serve_command
from genderfusion.cli.running import FLAGS, message
from genderfusion.files.outputs import check_output

SCRIPTS = [extract_commands.train_backbone_main, extract_commands.extract_main, extract_commands.make_synthetic_main,
           model_commands.train_head_main, model_commands.audit_labels_main, predict_command.predict_main,
           serve_command.serve_main]


def test_an_option_error_names_the_parameter_in_the_library_and_the_flag_in_the_cli(tmp_path):
    with pytest.raises(ValueError) as caught:
        check_output(tmp_path / "x.txt", (".csv",))
    assert str(caught.value).startswith(f"output {tmp_path / 'x.txt'}: write a .csv file")
    assert message(caught.value) == f"--out {tmp_path / 'x.txt'}: write a .csv file (the suffix says which)"


def test_the_parameters_a_message_names_become_flags():
    from genderfusion.extract.errors import BadImageError

    exc = BadImageError("a.jpg", "truncated; rerun with skip_bad=True to exclude it")
    assert message(exc) == "a.jpg: cannot decode image (truncated; rerun with --skip-bad to exclude it)"
    assert message(ValueError("folds exist; pass new_folds=True, or group_duplicates=False")) == \
        "folds exist; pass --new-folds, or --no-group-duplicates"


def test_every_flag_the_table_names_is_a_flag_of_a_console_script(capsys):
    helps = ""
    for main in SCRIPTS:
        with pytest.raises(SystemExit):
            main(["--help"])
        helps += capsys.readouterr().out
    for flag in FLAGS.values():
        assert flag.strip() in helps, flag
