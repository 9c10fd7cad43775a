"""Property-based tests of `python -m trainer.main` against bad input (#24): a corrupted corpus,
an encoder that cannot be built from the flags, a model too large for memory, each end in one
`error:` line (naming the file and line, or the flag), never a traceback, and an earlier run
directory stays byte for byte as it was, even with --overwrite; nothing is left in the data
cache. Run in this process (`trainer.main.main` as absl's app.run calls it), as few examples as
show it: the corpora themselves are the preprocessing properties' (test_corpus_properties.py).
"""

import dataclasses
import hashlib
import pathlib
import shutil
import tempfile
from types import SimpleNamespace

import pytest
from absl import flags
from hypothesis import HealthCheck, assume, given, settings

from tests import corrupt_corpora as cc
from tests import trainer_testing as tt

GOOD = "中 B-LOC\n国 I-LOC\n人 O\n\n张 B-PER\n三 I-PER\n说 O\n\n" * 4


def tree_digest(directory: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def run_main(args) -> object:
    """trainer.main.main with `args` as absl's app.run calls it; returns SystemExit's code."""
    from trainer import main as main_lib

    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["trainer.main", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main_lib.main(["trainer.main"])
    finally:
        flags.FLAGS.unparse_flags()
    return exit_info.value.code


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, bert_chinese_dir):
    """A run directory of an earlier run (config.json, a checkpoint file) and the flags of a
    tiny run into it, for corpus files `corpus(root)` writes."""
    from trainer import config as config_lib

    root = tmp_path_factory.mktemp("training_properties")

    def args_for(paths: dict[str, pathlib.Path], run_dir: pathlib.Path, **overrides):
        values = dict(max_seq_length=16, stride=4, batch_size=4, train_steps=1,
                      steps_per_loop=1, eval_batch_size=8, data_cache_dir=root / "cache")
        values.update(overrides)
        args = tt.tiny_args(paths, "", bert_chinese_dir, run_dir, **values)
        return [arg for arg in args if not arg.startswith("--manifest=")]

    good = {}
    for split in ("train", "dev", "test"):
        good[split] = root / f"{split}.txt"
        good[split].write_text(GOOD, encoding="utf-8")
    run_dir = root / "earlier_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint").write_text("an earlier run")
    config_lib.write_config(config_lib.parse_flags(args_for(good, run_dir)), run_dir)
    return SimpleNamespace(root=root, good=good, run_dir=run_dir, args_for=args_for,
                           digest=tree_digest(run_dir))


def check_nothing_touched(earlier):
    assert tree_digest(earlier.run_dir) == earlier.digest
    cache = earlier.root / "cache"
    assert not cache.exists() or list(cache.iterdir()) == [], list(cache.iterdir())


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example, HealthCheck.filter_too_much])
@given(case=cc.corpus_cases(max_corruptions=2))
def test_a_corrupt_corpus_is_one_error_line_and_the_earlier_run_stays(earlier, case):
    # As the trainer preprocesses: formats detected, broken tag sequences repaired.
    case = dataclasses.replace(case, input_format="auto", on_invalid="repair")
    # Corpora the independent reading finds bad lines in (a good one would train: slow).
    assume(any(cc.expected_reading(data, cc.format_of(case)).error_lines
               for data in case.files.values()))
    with tempfile.TemporaryDirectory(dir=earlier.root) as scratch:
        paths = dict(earlier.good)
        for split, data in case.files.items():
            paths[split] = pathlib.Path(scratch) / f"{split}.txt"
            paths[split].write_bytes(data)
        code = run_main(earlier.args_for(paths, earlier.run_dir) + ["--overwrite"])
        assert isinstance(code, str), code
        cc.check_error_message(code, dataclasses.replace(case, files={
            split: path.read_bytes() for split, path in paths.items()}), paths)
    check_nothing_touched(earlier)


# Encoders that cannot be built from the flags, found by trying values of --encoder_config:
# they were tracebacks (ValueError, TypeError, JSONDecodeError), after --overwrite had emptied
# the run directory.
ENCODERS = {
    "not JSON": ('{"hidden_size": 32', "--encoder_config='{\"hidden_size\": 32' is not a "
                                       "readable JSON object"),
    "heads": ('{"hidden_size": 30, "num_attention_heads": 4}',
              "the model cannot be built from --encoder_config="),
    "type": ('{"hidden_size": "x"}', "the model cannot be built from --encoder_config="),
    "layers": ('{"num_hidden_layers": 0, "hidden_size": 32, "num_attention_heads": 2}',
               "encoder config: num_hidden_layers=0 must be >= 1"),
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_an_encoder_that_cannot_be_built_is_one_error_line(earlier, name):
    encoder_config, words = ENCODERS[name]
    code = run_main(earlier.args_for(earlier.good, earlier.run_dir, hidden_layers="concat",
                                     num_hidden_layers_used=2, encoder_config=encoder_config)
                    + ["--overwrite", "--nofeature_cache"])
    assert isinstance(code, str) and code.startswith("error: ") and "\n" not in code, code
    assert words in code, code
    # The preprocessed data stays cached (it is good); the run directory is untouched.
    assert tree_digest(earlier.run_dir) == earlier.digest
    shutil.rmtree(earlier.root / "cache", ignore_errors=True)


def test_out_of_memory_is_one_error_line(earlier, monkeypatch):
    import tensorflow as tf

    from trainer import loop

    def too_large(config, run_dir):
        raise tf.errors.ResourceExhaustedError(
            None, None, "OOM when allocating tensor with shape[1000000000000,32]\n\t "
                        "[[{{node embedding_lookup}}]]")

    monkeypatch.setattr(loop, "train_and_evaluate", too_large)
    code = run_main(earlier.args_for(earlier.good, earlier.root / "oom_run"))
    assert code == ("error: OOM when allocating tensor with shape[1000000000000,32] (out of "
                    "memory: try a smaller --batch_size or model) (ResourceExhaustedError from "
                    "TensorFlow)")
