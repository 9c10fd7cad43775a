"""absl_flags_parser: the commands under absl.app.run say a bad flag in one `error:` line."""

import pytest
from absl import flags

from data_pipeline.cli import absl_flags_parser


def command_flags() -> flags.FlagValues:
    flag_values = flags.FlagValues()
    flags.DEFINE_integer("batch_size", 32, "Batch size.", flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "Where to write.", flag_values=flag_values)
    flags.mark_flag_as_required("output_dir", flag_values=flag_values)
    return flag_values


@pytest.mark.parametrize("argv, reason", [
    (["--output_dir=o", "--batch_size=abc"],
     "flag --batch_size=abc: invalid literal for int() with base 10: 'abc'"),
    (["--output_dir=o", "--batchsize=8"],
     "Unknown command line flag 'batchsize'. Did you mean: batch_size ?"),
    (["--batch_size=8"], "flag --output_dir=None: Flag --output_dir must have a value other "
                         "than None."),
])
def test_a_bad_flag_is_one_error_line_and_the_commands_exit_status(argv, reason, capsys):
    parse = absl_flags_parser("python -m x", exit_code=2, flag_values=command_flags())
    with pytest.raises(SystemExit) as exit_info:
        parse(["x", *argv])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"error: {reason}\n"
                                       f"python -m x --helpfull lists the flags.\n")


def test_good_flags_are_parsed_and_the_rest_returned():
    flag_values = command_flags()
    parse = absl_flags_parser("python -m x", exit_code=1, flag_values=flag_values)
    assert parse(["x", "--output_dir=o", "--batch_size=8", "extra"]) == ["x", "extra"]
    assert flag_values.batch_size == 8 and flag_values.output_dir == "o"
