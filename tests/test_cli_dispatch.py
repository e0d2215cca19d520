"""The `cxrfm` dispatcher: one module per command, `--help` on each, user errors as one stderr line + exit 2."""

import pytest

from cxrfm.cli import command_modules, main


def test_every_command_module_is_found_and_has_help(capsys):
    commands = command_modules()
    assert "convert" in commands
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: cxrfm {name}" in capsys.readouterr().out


def test_convert_text_file_is_a_clear_error_not_index_error(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("some notes about the model\n")
    assert main(["convert", "chexfound", str(notes), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{notes}: not a PyTorch checkpoint (27 bytes" in err
    assert "Traceback" not in err and "IndexError" not in err


def test_user_error_is_one_stderr_line_and_stdout_stays_empty(tmp_path, capsys):
    argv = ["convert", "glori", str(tmp_path / "nope.pth"), str(tmp_path / "out"), "--backbone", str(tmp_path)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().endswith("convert the backbone first (cxrfm convert chexfound).")
    assert captured.err.count("\n") == 1
