"""trainer/cache.py (preprocessing on demand, cached) and the trainer's input: --lowercase reaches
preprocessing (and the cache key), and the training batches pad to the manifest's max_seq_length,
whatever the flag says."""

import json
import pathlib

from tests.data_pipeline.test_unknown_rates import CASED_ENGLISH
from trainer import config as config_lib
from trainer import cache

CHAR_CORPUS = "中 B-LOC\n国 I-LOC\n人 O\n\n张 B-PER\n三 I-PER\n说 O\n\n" * 4


def args_for(corpus, tokenizer, tmp_path, *extra):
    return [f"--train_file={corpus}", f"--dev_file={corpus}", f"--test_file={corpus}",
            f"--tokenizer={tokenizer}", "--pretrained=",
            '--encoder_config={"num_hidden_layers": 2}',
            f"--data_cache_dir={tmp_path / 'cache'}", f"--run_dir={tmp_path / 'run'}", *extra]


def test_lowercase_flag_lowercases_in_preprocessing_and_keys_the_cache(tmp_path, bert_chinese_dir):
    """A cased English corpus with the uncased bert-base-chinese vocabulary (no capitals)."""
    corpus = tmp_path / "cased.conll"
    corpus.write_text(CASED_ENGLISH, encoding="utf-8")
    cased = config_lib.parse_flags(args_for(corpus, bert_chinese_dir, tmp_path))
    lowered = config_lib.parse_flags(args_for(corpus, bert_chinese_dir, tmp_path, "--lowercase"))
    assert (cased.lowercase, lowered.lowercase) == (False, True)
    assert "lowercase" not in cache.preprocessing_inputs(cased)  # earlier caches keep their key
    assert cache.preprocessing_inputs(lowered)["lowercase"] is True

    directories = {name: pathlib.Path(cache.ensure_preprocessed(config, log=lambda message: None))
                   for name, config in (("cased", cased), ("lowered", lowered))}
    assert directories["cased"] != directories["lowered"]
    manifests = {name: json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
                 for name, directory in directories.items()}
    assert manifests["cased"]["tokenizer"]["lowercase"] is False
    assert manifests["lowered"]["tokenizer"]["lowercase"] is True
    before = manifests["cased"]["splits"]["train"]["counts"]
    after = manifests["lowered"]["splits"]["train"]["counts"]
    assert before["unknown_word_rate"] > 0.1, before
    assert after["unknown_word_rate"] < before["unknown_word_rate"] / 2, after
    assert after["unknown_entity_word_rate"] < before["unknown_entity_word_rate"]


def test_training_batches_pad_to_the_manifests_max_seq_length(tmp_path, bert_chinese_dir):
    """--manifest made with max_seq_length=16; the flag keeps its default of 128."""
    import tensorflow as tf

    from data_pipeline.preprocess import preprocess
    from trainer import training_state

    corpus = tmp_path / "chars.txt"
    corpus.write_text(CHAR_CORPUS, encoding="utf-8")
    shards = tmp_path / "shards"
    preprocess({split: str(corpus) for split in ("train", "dev", "test")}, shards,
               str(bert_chinese_dir), max_seq_length=16, stride=4, num_workers=0)
    config = config_lib.parse_flags(args_for(corpus, bert_chinese_dir, tmp_path,
                                             f"--manifest={shards}", "--nobucketing",
                                             "--batch_size=4"))
    assert config.max_seq_length == 128
    dataset = training_state.train_dataset(config, tf.distribute.get_strategy(), str(shards),
                                           position=0)
    batch = next(iter(dataset))
    assert batch["input_ids"].shape == (4, 16)
