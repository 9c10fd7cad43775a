"""Property-based test of `python -m data_pipeline.preprocess`'s flags (#24): every flag, given
a value of a wrong type or out of its range, is refused by absl's parser (its own message) or
ends in one `error:` line naming the flag or the value, exit status 2; no traceback. A value
that is accepted gives a finished output. The flags are enumerated from the command's own
`define_flags`, so a new flag is covered without touching this file.
"""

import contextlib
import functools
import io
import pathlib
import tempfile

import pytest
from absl import flags
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from data_pipeline import preprocess
from data_pipeline.manifest import MANIFEST_NAME

BASE = "中 B-LOC\n国 I-LOC\n人 O\n\n张 B-PER\n三 I-PER\n说 O\n"
_DECLARERS = ("DEFINE_string", "DEFINE_integer", "DEFINE_enum", "DEFINE_boolean",
              "mark_flags_as_required")


def preprocess_flags() -> flags.FlagValues:
    """The command's flags on a fresh FlagValues (its `define_flags` declares them on absl's
    global FLAGS, where the trainer's flags of the same names live in this process)."""
    fresh = flags.FlagValues()
    with pytest.MonkeyPatch.context() as patch:
        for name in _DECLARERS:
            patch.setattr(flags, name, functools.partial(getattr(flags, name), flag_values=fresh))
        preprocess.define_flags()
    return fresh


FLAG_NAMES = sorted(preprocess_flags())
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=()), max_size=10)
VALUES = st.one_of(
    TEXT, st.integers(-(10 ** 12), 0).map(str), st.floats().map(repr),
    st.sampled_from(["", " ", "-1", "0", "1", "2", "100000000", "nan", "0x10", "/nonexistent",
                     ".", "/", "O,B-LOC", "B-LOC,O", ",,", "O", "GZIP", "auto"]))


def run_command(args: list[str]) -> tuple[object, str]:
    """`preprocess.main` as absl's app.run calls it: (exit status or "parser", stderr)."""
    flag_values = preprocess_flags()
    try:
        flag_values(["preprocess", *args])
    except flags.Error as error:  # printed as "error: <this>" (cli.absl_flags_parser)
        return "parser", str(error)
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr), \
            contextlib.redirect_stdout(io.StringIO()):
        patch.setattr(flags, "FLAGS", flag_values)
        try:
            preprocess.main(["preprocess"])
            status = 0
        except SystemExit as stop:
            status = stop.code
    return status, stderr.getvalue()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("preprocess_flags")
    (root / "train.txt").write_text(BASE, encoding="utf-8")
    return root


@pytest.mark.parametrize("name", FLAG_NAMES)
def test_a_wrong_value_of_any_flag_is_one_error_naming_it(root, bert_chinese_dir, name):
    good = {"train": root / "train.txt", "tokenizer": bert_chinese_dir, "max_seq_length": 16,
            "stride": 4, "num_workers": 0}

    @settings(max_examples=6, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(value=VALUES)
    @example(value="-1")
    def check(value):
        if name == "tokenizer":
            value = "./" + value  # a path: a name would be looked up on the hub (slow offline)
        if name == "num_workers" and value.strip().lstrip("+").isdigit() and int(value) > 0:
            value = "0"  # worker processes are slow here, and tested elsewhere
        with tempfile.TemporaryDirectory(dir=root) as scratch, \
                pytest.MonkeyPatch.context() as patch:
            patch.chdir(scratch)  # relative paths land in (or are looked up in) scratch
            values = {**good, "output_dir": pathlib.Path(scratch) / "out", name: value}
            status, err = run_command([f"--{flag}={v}" for flag, v in values.items()])
            assert "Traceback" not in err
            if status == "parser":
                assert f"--{name}" in err, (value, err)
            elif status == 0:
                output = pathlib.Path(scratch) / values["output_dir"]
                assert (output / MANIFEST_NAME).is_file(), (value, err)
            else:
                assert status == 2, (value, status, err)
                [error] = [line for line in err.splitlines() if line.startswith("error: ")]
                assert name in error or value.strip() in error, (value, error)

    check()


def test_a_negative_worker_count_is_refused_not_taken_as_zero():
    status, error = run_command(["--output_dir=out", "--tokenizer=t", "--num_workers=-3"])
    assert (status, error) == ("parser", "flag --num_workers=-3: -3 is not a non-negative integer")
