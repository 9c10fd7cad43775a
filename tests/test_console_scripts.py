"""The console scripts setup.cfg installs: each names a callable that runs its command as
`python -m` does, and the commands answer an argument they do not take with one `error:` line."""

import configparser
import importlib
import subprocess
import sys

import pytest

from tests.trainer_testing import REPO

# Script -> (the `python -m` module it stands for, a flag its --helpfull lists, exit status after
# the help: absl.app.run's commands exit 1 after printing it, those parsing with
# data_pipeline.cli 0).
COMMANDS = {
    "tagger-preprocess": ("data_pipeline.preprocess", "--output_dir", 1),
    "tagger-train": ("trainer.main", "--train_file", 1),
    "tagger-export": ("trainer.export", "--run_dir", 0),
    "tagger-predict": ("serving.predict", "--export_dir", 0),
}


def console_scripts() -> dict[str, tuple[str, str]]:
    """{script: (module, function)} from setup.cfg's [options.entry_points]."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg", encoding="utf-8")
    scripts = {}
    for line in parser["options.entry_points"]["console_scripts"].strip().splitlines():
        name, _, target = line.partition("=")
        module, _, function = target.strip().partition(":")
        scripts[name.strip()] = (module, function)
    return scripts


def test_every_command_has_a_console_script_naming_a_callable():
    scripts = console_scripts()
    assert {name: module for name, (module, _) in scripts.items()} == {
        name: module for name, (module, _, _) in COMMANDS.items()}
    for name, (module, function) in scripts.items():
        assert callable(getattr(importlib.import_module(module), function)), name


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_console_script_runs_its_command(script):
    """What pip's generated script does: `sys.exit(function())` with the script's argv."""
    module, function = console_scripts()[script]
    _, flag, status = COMMANDS[script]
    code = (f"import sys; from {module} import {function}; "
            f"sys.argv = [{script!r}, '--helpfull']; sys.exit({function}())")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == status, result.stderr[-2000:]
    assert flag in result.stdout, result.stdout[-2000:]
    assert "Traceback" not in result.stderr


def test_preprocess_names_a_stray_argument(capsys):
    from data_pipeline import preprocess

    with pytest.raises(SystemExit) as exit_info:
        preprocess.main(["data_pipeline.preprocess", "train.txt"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: unexpected arguments ['train.txt']: every value is given as a flag, "
        "--name=value (`python -m data_pipeline.preprocess --helpfull` lists the flags)\n")


def test_export_names_a_stray_argument(capsys):
    from trainer import export

    with pytest.raises(SystemExit) as exit_info:
        export.main(["--run_dir=r", "--export_dir=e", "extra"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(
        "error: unexpected arguments ['extra']: every value is given as a flag, --name=value\n")
