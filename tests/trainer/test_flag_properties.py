"""Property-based tests of the trainer's flags (#24): every flag, given a value of a wrong type
or out of its range, is refused by absl's parser or by the config (`ConfigError`, which
`python -m trainer.main` prints as one `error:` line) naming that flag; no other exception,
which would reach the user as a traceback. A value that is accepted gives a config that can be
written (config.json). The flags are enumerated from a fresh FlagValues, so a new flag is
covered without touching this file. Checked before any work: nothing is written.
"""

import json
import math
import pathlib

import pytest
from absl import flags
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests import trainer_testing as tt
from trainer import config as config_lib


def fresh_flags() -> flags.FlagValues:
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    return flag_values


FLAGS = fresh_flags()
FLAG_NAMES = sorted(FLAGS)

# Text a user may type or a flagfile may hold: any code point but NUL (no command line can hold
# one), lone surrogates (how Python keeps argv bytes that are not UTF-8) included.
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=()), max_size=12)
NUMBER_TEXT = st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e400", "-1e400", "-0",
                               "1e-400", "0x10", "1_000", " 5", "5 ", "--1", "+3", "\u0663",
                               "1,5", "1.5.2", "True", "None", "[]", "{}", "2**64"])
INTEGERS = st.integers(-(10 ** 20), 10 ** 20).map(str)
FLOATS = st.floats(allow_nan=True, allow_infinity=True).map(repr)
STRINGS = st.one_of(TEXT, st.sampled_from(
    ["", " ", "{", "{}", "[]", "null", '{"hidden_size": 32', '{"num_hidden_layers": 2}',
     "/nonexistent/dir", "../shared/nonexistent", "~/x", ".", "..", "/", "/dev/null",
     "bert-base-chinese", "a b", "hfl/rbt3", "a/b/c", "\udcff", "x\ny"]))


def wrong_values(flag: flags.Flag):
    """Values of other types, out of range, or just odd, for a flag of this type."""
    numbers = st.one_of(NUMBER_TEXT, INTEGERS, FLOATS, TEXT)
    kind = flag.flag_type()
    if kind in ("int", "float"):
        return numbers
    if kind == "bool":
        return st.one_of(st.sampled_from(["true", "false", "1", "0", "maybe", "yes", "", "2"]),
                         TEXT)
    if kind.endswith("enum"):
        return st.one_of(st.sampled_from(list(flag.parser.enum_values)).map(str.upper),
                         st.sampled_from(list(flag.parser.enum_values)).map(" {}".format), TEXT)
    return st.one_of(STRINGS, numbers)


@pytest.fixture(scope="module")
def good_args(tmp_path_factory, bert_chinese_dir):
    """Flags of a valid tiny run (nothing exists at --run_dir)."""
    root = tmp_path_factory.mktemp("flag_properties")
    paths = {}
    for split in ("train", "dev", "test"):
        paths[split] = root / f"{split}.txt"
        paths[split].write_text("中 B-LOC\n国 I-LOC\n\n人 O\n", encoding="utf-8")
    args = tt.tiny_args(paths, root / "no_manifest", bert_chinese_dir, root / "run")
    args = [arg for arg in args if not arg.startswith("--manifest=")]
    config_lib.config_from_flags(parsed(args))  # valid as it is
    return root, args


def parsed(args: list[str]) -> flags.FlagValues:
    flag_values = fresh_flags()
    flag_values(["trainer.main", *args])
    return flag_values


def check_one_value(root: pathlib.Path, args: list[str], name: str, value: str) -> str:
    """Gives --name=value after `args`; returns how it ended ("parser", "config", "accepted")."""
    argument = f"--{name}={value}"
    try:
        flag_values = parsed([*args, argument])
    except flags.Error as error:  # printed as "error: <this>" (cli.absl_flags_parser)
        assert f"--{name}" in str(error), (argument, str(error))
        return "parser"
    try:
        config = config_lib.config_from_flags(flag_values)
        config_lib.check_run_dir(config)
    except config_lib.ConfigError as error:
        message = f"error: {error}"  # as trainer.main prints it
        assert "\n" not in message and "\r" not in message, (argument, message)
        assert f"--{name}" in message, (argument, message)
        return "config"
    finally:
        assert sorted(p.name for p in root.iterdir()) == ["dev.txt", "test.txt", "train.txt"]
    # Accepted: the run directory's config.json can be written, and reads back the same.
    text = config.to_json()
    assert config_lib.TrainConfig(**json.loads(text)) == config
    for field, value in config.to_dict().items():
        assert not isinstance(value, float) or math.isfinite(value), (argument, field)
    return "accepted"


# Values that were accepted here and then ended in a traceback once the trainer used them.
REGRESSIONS = {
    # json.loads when the model was built, after preprocessing (and --overwrite).
    "encoder_config": ["{", '{"hidden_size": 32', "[]", "a b"],
    # NumPy's "Seed must be between 0 and 2**32 - 1" (tf.keras.utils.set_random_seed).
    "seed": ["4294967296", "100000000000000000000"],
}


@pytest.mark.parametrize("name", FLAG_NAMES)
def test_a_wrong_value_of_any_flag_is_one_error_naming_it(good_args, name):
    root, args = good_args

    @settings(max_examples=8, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(value=wrong_values(FLAGS[name]))
    def check(value):
        check_one_value(root, args, name, value)

    for value in REGRESSIONS.get(name, ()):
        check = example(value=value)(check)
    check()


def test_the_regressions_are_refused_by_the_config(good_args):
    root, args = good_args
    for name, values in REGRESSIONS.items():
        for value in values:
            assert check_one_value(root, args, name, value) == "config", (name, value)
