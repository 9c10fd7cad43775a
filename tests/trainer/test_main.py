"""`python -m trainer.main` with bad flags, paths and data: `error: ...`, non-zero exit, no
traceback; flag and run-directory errors before TensorFlow is imported, touching nothing."""

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from tests import trainer_testing as tt

# Runs trainer.main as `python -m` would, then says whether TensorFlow got imported.
WRAPPER = """
import atexit, runpy, sys
atexit.register(lambda: print("tensorflow imported:", "tensorflow" in sys.modules,
                              file=sys.stderr))
sys.argv = ["trainer.main", *sys.argv[1:]]
runpy.run_module("trainer.main", run_name="__main__", alter_sys=True)
"""
CORPUS = "中 B-LOC\n国 I-LOC\n人 O\n\n张 B-PER\n三 I-PER\n说 O\n\n"


@pytest.fixture
def corpus_files(tmp_path):
    paths = {}
    for split in ("train", "dev", "test"):
        paths[split] = tmp_path / f"{split}.txt"
        paths[split].write_text(CORPUS * 4, encoding="utf-8")
    return paths


def flags_for(paths, tokenizer, run_dir, tmp_path, **overrides):
    values = dict(train_file=paths["train"], dev_file=paths["dev"], test_file=paths["test"],
                  tokenizer=tokenizer, pretrained="", encoder_config=json.dumps(tt.TINY_BERT),
                  max_seq_length=16, stride=4, batch_size=4, train_steps=2, steps_per_loop=1,
                  run_dir=run_dir, data_cache_dir=tmp_path / "cache", progress_bar=False,
                  export=False, mixed_precision="none")
    values.update(overrides)
    return [f"--{k}={v}" if not isinstance(v, bool) else (f"--{k}" if v else f"--no{k}")
            for k, v in values.items()]


def run_wrapped(args):
    return subprocess.run([sys.executable, "-c", WRAPPER, *map(str, args)], cwd=tt.REPO,
                          capture_output=True, text=True, timeout=300)


def test_path_and_flag_errors_come_before_tensorflow_and_change_nothing(
        tmp_path, corpus_files, bert_chinese_dir, e5_dir):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    good = flags_for(corpus_files, bert_chinese_dir, run_dir, tmp_path)
    from trainer import config as config_lib

    config_lib.write_config(config_lib.parse_flags(good), run_dir)
    before = (run_dir / "config.json").read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    # Encoder directories transformers cannot use (links to the shared model's small files, and
    # a 1-byte stand-in for the weights): the weights without a tokenizer, or PyTorch pickles.
    no_tokenizer, pickled = tmp_path / "no_tokenizer", tmp_path / "pickled"
    for directory, files in ((no_tokenizer, ["tf_model.h5"]),
                             (pickled, ["pytorch_model.bin", "tokenizer.json"])):
        directory.mkdir()
        (directory / "config.json").symlink_to(e5_dir / "config.json")
        for name in files:
            (directory / name).write_bytes(b"x")
    cases = [
        ([f"--pretrained={no_tokenizer}", "--tokenizer=", "--encoder_config="],
         f"error: --pretrained='{no_tokenizer}' is also the tokenizer (no --tokenizer given), but "
         f"{no_tokenizer} holds no tokenizer files: expected tokenizer.json, or the vocabulary of "
         f"a tokenizer transformers can convert (vocab.txt, sentencepiece.bpe.model, "
         f"spiece.model, tokenizer.model, or vocab.json with merges.txt)"),
        ([f"--pretrained={pickled}", "--encoder_config="],
         f"error: --pretrained='{pickled}': {pickled} holds only PyTorch pickles "
         f"(pytorch_model.bin), which are refused"),
        ([f"--pretrained={pickled}", "--encoder_config="],
         f"m.save_pretrained('{pickled}', safe_serialization=True)"),
        ([f"--manifest={empty}"], f"error: --manifest='{empty}': no manifest.json"),
        ([f"--run_dir={a_file}"], f"error: --run_dir='{a_file}' is a file, expected a dir"),
        (["--batch_size=8"], "was created with a different config (--batch_size: 4 -> 8)"),
        (["--head_learning_rate=nan"], "error: --head_learning_rate=nan is invalid"),
        ([f"--train_file={tmp_path}"], f"error: --train_file='{tmp_path}' is a directory"),
    ]
    for extra, message in cases:
        result = run_wrapped(good + extra)
        assert result.returncode == 1, (extra, result.stderr[-2000:])
        assert message in result.stderr, (extra, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
        assert "tensorflow imported: False" in result.stderr, extra
        assert (run_dir / "config.json").read_bytes() == before
        assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]


def test_corpus_error_through_the_real_entry_point_has_no_traceback(tmp_path, corpus_files,
                                                                    bert_chinese_dir):
    """... and leaves an earlier run alone, even with --overwrite (the data is checked first)."""
    from trainer import config as config_lib

    run_dir = tmp_path / "run"
    args = flags_for(corpus_files, bert_chinese_dir, run_dir, tmp_path)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint").write_text("earlier run")
    config_lib.write_config(config_lib.parse_flags(args), run_dir)
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    corpus_files["dev"].write_text(CORPUS + "中 X-LOC\n", encoding="utf-8")
    result = tt.run_main(args + ["--overwrite", "--max_steps=1"], check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"error: {corpus_files['dev']}:9: tag 'X-LOC' does not fit" in result.stderr
    assert "Traceback" not in result.stderr
    assert {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
            if p.is_file()} == before


@pytest.fixture
def run_in_process():
    """Calls trainer.main.main with flags, as app.run would; returns the SystemExit code."""
    from absl import flags

    from trainer import main as main_lib

    def run(args):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["trainer.main", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main_lib.main(["trainer.main"])
        return exit_info.value.code

    yield run
    flags.FLAGS.unparse_flags()


def test_data_errors_after_tensorflow_end_in_one_error_line(tmp_path, corpus_files,
                                                            bert_chinese_dir, run_in_process):
    args = flags_for(corpus_files, bert_chinese_dir, tmp_path / "run", tmp_path)
    # A split whose format differs (preprocess's ValueError, wrapped as trainer.cache.DataError).
    corpus_files["test"].write_text("EU NNP B-LOC\nrejects VBZ O\n", encoding="utf-8")
    code = run_in_process(args + ["--overwrite"])
    assert code.startswith("error: the splits have different formats"), code
    corpus_files["test"].write_text(CORPUS, encoding="utf-8")

    # A corrupt train shard (ShardError, naming it) in a preprocessed directory.
    from data_pipeline.preprocess import preprocess

    shards = tmp_path / "shards"
    preprocess({k: str(v) for k, v in corpus_files.items()}, shards, str(bert_chinese_dir),
               max_seq_length=16, stride=4, num_workers=0)
    shard = next(shards.glob("train-*.tfrecord"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    code = run_in_process(args + [f"--manifest={shards}", "--overwrite", "--nofeature_cache"])
    assert code.startswith("error: ") and shard.name in code, code

    # The same shard with the manifest's size and sha256 updated to match: the record that
    # fails to read is named before training, not by TensorFlow's iterator.
    manifest = json.loads((shards / "manifest.json").read_text())
    entry = next(e for e in manifest["splits"]["train"]["shards"] if e["file"] == shard.name)
    entry["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (shards / "manifest.json").write_text(json.dumps(manifest))
    code = run_in_process(args + [f"--manifest={shards}", "--overwrite", "--nofeature_cache"])
    assert re.fullmatch(rf"error: shard {re.escape(str(shard))} \(split 'train'\): record \d+ "
                        rf"cannot be read \(.*\): the shard is damaged; re-run preprocessing "
                        rf"with --overwrite \(`python -m data_pipeline.preprocess "
                        rf"--output_dir={re.escape(str(shards))} --overwrite` .*\)", code), code


def test_tensorflow_op_errors_lose_their_graph_trailers(tmp_path, corpus_files, bert_chinese_dir,
                                                        run_in_process, monkeypatch):
    import tensorflow as tf

    from trainer import loop

    def fail(config, run_dir):
        raise tf.errors.InvalidArgumentError(
            None, None, "Key: label_ids.  Can't parse serialized Example.\n\t "
                        "[[{{node ParseExample/ParseExampleV2}}]] [Op:IteratorGetNext]")

    monkeypatch.setattr(loop, "train_and_evaluate", fail)
    code = run_in_process(flags_for(corpus_files, bert_chinese_dir, tmp_path / "run", tmp_path))
    assert code == ("error: Key: label_ids.  Can't parse serialized Example. "
                    "(InvalidArgumentError from TensorFlow)")

    def iterator_assertion(config, run_dir):
        raise tf.errors.InvalidArgumentError(
            None, None, "{{function_node __wrapped__IteratorGetNext_output_types_8_device_/job:"
                        "localhost/replica:0/task:0/device:CPU:0}} assertion failed: [shard "
                        "/d/dev-00000-of-00001.tfrecord is corrupt or truncated: only 3 of its 5 "
                        "records (per the manifest) could be read]\n\t [[{{node Assert/Assert}}]]"
                        " [Op:IteratorGetNext] name: ")

    monkeypatch.setattr(loop, "train_and_evaluate", iterator_assertion)
    code = run_in_process(flags_for(corpus_files, bert_chinese_dir, tmp_path / "run", tmp_path))
    assert code == ("error: shard /d/dev-00000-of-00001.tfrecord is corrupt or truncated: only 3 "
                    "of its 5 records (per the manifest) could be read (InvalidArgumentError "
                    "from TensorFlow)")

    def missing(config, run_dir):
        raise FileNotFoundError(2, "No such file or directory", "/data/gone.txt")

    monkeypatch.setattr(loop, "train_and_evaluate", missing)
    code = run_in_process(flags_for(corpus_files, bert_chinese_dir, tmp_path / "run", tmp_path))
    assert code == "error: [Errno 2] No such file or directory: '/data/gone.txt'"
    assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"


def test_a_stray_argument_is_one_error_line_naming_it():
    from trainer import main as main_lib

    with pytest.raises(SystemExit) as exit_info:
        main_lib.main(["trainer.main", "runs/x", "lr=1e-3"])
    assert exit_info.value.code == (
        "error: unexpected arguments ['runs/x', 'lr=1e-3']: every value is given as a flag, "
        "--name=value (`python -m trainer.main --helpfull` lists the flags)")


def test_a_bad_flag_value_is_one_error_line_not_absls_fatal():
    result = tt.run_main(["--batch_size=abc"], check=False)
    assert result.returncode == 1
    assert result.stderr == ("error: flag --batch_size=abc: invalid literal for int() with base "
                             "10: 'abc'\npython -m trainer.main --helpfull lists the flags.\n")
