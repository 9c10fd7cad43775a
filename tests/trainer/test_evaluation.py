"""Tests for trainer.evaluation: entity scores == seqeval strict IOB2, merging, evaluate()."""

import random
import warnings

import numpy as np
import pytest
import tensorflow as tf
from seqeval.metrics import (classification_report, f1_score, precision_score,
                             recall_score)
from seqeval.scheme import IOB2, Entities

import trainer  # noqa: F401  (models/__init__.py chooses Keras 2 before tf.keras is used)
from data_pipeline.tags import extract_entities
from data_pipeline.windows import merge_window_predictions
from trainer import evaluation


def _split_cpu_in_two() -> None:
    """Two logical CPUs for the MirroredStrategy test, if TensorFlow is not initialized yet."""
    cpus = tf.config.list_physical_devices("CPU")
    if tf.config.get_logical_device_configuration(cpus[0]) is None:
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
        except RuntimeError:  # already initialized by an earlier test module: use what exists
            pass


_split_cpu_in_two()

LABEL_MAP = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


# ------------------------------------------------------------------------------------------------
# Entities and scores against seqeval
# ------------------------------------------------------------------------------------------------


def seqeval_metrics(gold, pred):
    """Our metric keys computed by seqeval (strict IOB2); per-type only for types seqeval lists."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = {
            "precision": precision_score(gold, pred, mode="strict", scheme=IOB2),
            "recall": recall_score(gold, pred, mode="strict", scheme=IOB2),
            "f1": f1_score(gold, pred, mode="strict", scheme=IOB2),
        }
        report = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True)
    for name, row in report.items():
        if name.endswith(" avg"):
            continue
        metrics[f"precision/{name}"] = row["precision"]
        metrics[f"recall/{name}"] = row["recall"]
        metrics[f"f1/{name}"] = row["f1-score"]
    if "micro avg" in report:
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert report["micro avg"][theirs] == metrics[ours]
    return metrics


def assert_same_as_seqeval(gold, pred):
    ours = evaluation.entity_metrics(evaluation.count_entities(gold, pred))
    theirs = seqeval_metrics(gold, pred)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert ours[key] == theirs[key], (key, ours[key], theirs[key], gold, pred)
    # The entities themselves, not only the scores.
    for sentence_id, tags in enumerate(gold + pred):
        expected = sorted((e.tag, e.start, e.end)
                          for e in Entities([tags], IOB2).entities[0])
        assert sorted(extract_entities(tags)) == expected, tags


def test_scores_golden():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "I-ORG", "O"]]
    metrics = evaluation.entity_metrics(evaluation.count_entities(gold, pred),
                                        entity_types=["MISC"])
    assert metrics["precision"] == 0.5 and metrics["recall"] == 1 / 3
    assert metrics["f1"] == pytest.approx(0.4)
    assert metrics["f1/PER"] == 1.0 and metrics["recall/LOC"] == 0.0
    assert metrics["f1/ORG"] == 0.0 and metrics["precision/ORG"] == 0.0
    assert metrics["f1/MISC"] == 0.0  # requested type without entities: present, zero
    assert_same_as_seqeval(gold, pred)


@pytest.mark.parametrize("seed", range(6))
def test_scores_match_seqeval_on_random_sequences(seed):
    rng = random.Random(seed)
    # Types beyond the label map and invalid transitions (O I-PER, B-PER I-LOC) on purpose.
    alphabet = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-X", "I-X"]
    for _ in range(60):
        num_sentences = rng.randint(1, 6)
        lengths = [rng.randint(0, 12) for _ in range(num_sentences)]
        gold = [[rng.choice(alphabet) for _ in range(n)] for n in lengths]
        if rng.random() < 0.5:
            pred = [[rng.choice(alphabet) for _ in range(n)] for n in lengths]
        else:  # mostly right, a few tags changed: many true positives
            pred = [[t if rng.random() < 0.8 else rng.choice(alphabet) for t in s] for s in gold]
        if not any(Entities(gold + pred, IOB2).unique_tags):
            continue  # seqeval's report cannot be built without any entity
        assert_same_as_seqeval(gold, pred)


def test_scores_without_any_entity_are_zero():
    metrics = evaluation.entity_metrics(evaluation.count_entities([["O"]], [["O"]]))
    assert metrics == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert f1_score([["O"]], [["O"]], mode="strict", scheme=IOB2) == 0.0


def test_count_entities_rejects_ragged_input():
    with pytest.raises(ValueError, match="sentence 1"):
        evaluation.count_entities([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="2 gold sentences but 1"):
        evaluation.count_entities([["O"], ["O"]], [["O"]])


def read_char_corpus(path):
    sentences, tags, chars, sentence_tags = [], [], [], []
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            line = line.rstrip("\n")
            if not line:
                if chars:
                    sentences.append(chars)
                    tags.append(sentence_tags)
                chars, sentence_tags = [], []
                continue
            char, tag = line.rsplit(" ", 1)
            chars.append(char)
            sentence_tags.append(tag)
    if chars:
        sentences.append(chars)
        tags.append(sentence_tags)
    return sentences, tags


@pytest.mark.slow
def test_scores_match_seqeval_on_people_daily_dev(people_daily_dir):
    _, gold = read_char_corpus(people_daily_dir / "example.dev")
    assert len(gold) == 2318
    rng = random.Random(0)
    noisy = []
    for tags in gold:
        tags = list(tags)
        for i in range(len(tags)):
            r = rng.random()
            if r < 0.03:
                tags[i] = "O"
            elif r < 0.05:
                tags[i] = rng.choice(LABEL_MAP)  # makes invalid sequences like O I-PER
            elif r < 0.06 and tags[i].startswith("B-"):
                tags[i] = "I-" + tags[i][2:]
        noisy.append(tags)
    assert_same_as_seqeval(gold, noisy)
    counts = evaluation.count_entities(gold, gold)
    assert {t: c.gold for t, c in counts.items()} == {"LOC": 1951, "ORG": 984, "PER": 884}
    assert evaluation.entity_metrics(counts)["f1"] == 1.0


# ------------------------------------------------------------------------------------------------
# evaluate() with a fake tagger
# ------------------------------------------------------------------------------------------------


class FakeTagger(tf.keras.Model):
    """Logits = a fixed random row per input id, so predictions depend only on the input ids."""

    def __init__(self, vocab_size: int, num_tags: int, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.table_value = rng.normal(size=[vocab_size, num_tags]).astype(np.float32)
        self.table = tf.Variable(self.table_value)
        self.decode_calls = 0

    def call(self, inputs, training=False):
        logits = tf.gather(self.table, inputs["input_ids"])  # [B, T, K]
        return logits * tf.cast(inputs["attention_mask"], tf.float32)[..., None]

    def decode(self, logits, label_mask):
        tag_ids = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return tf.where(label_mask, tag_ids, -1), tf.reduce_max(logits, axis=[1, 2])

    def compute_loss(self, logits, label_ids):
        counted = label_ids != evaluation.IGNORE_ID
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.where(counted, label_ids, 0), logits)
        return (tf.reduce_sum(tf.where(counted, losses, 0.0)),
                tf.reduce_sum(tf.cast(counted, tf.float32)))


VOCAB_SIZE = 50
CLS, SEP, PAD = 1, 2, 0


def random_iob2(rng, length):
    tags, open_type = [], None
    for _ in range(length):
        r = rng.random()
        if open_type and r < 0.5:
            tags.append("I-" + open_type)
        elif r < 0.75:
            tags.append("O")
            open_type = None
        else:
            open_type = rng.choice(["LOC", "ORG", "PER"])
            tags.append("B-" + open_type)
    return tags


def make_windows(gold_tags, *, window_chars=6, step=4, seed=0):
    """Records like data_pipeline's: windows of `window_chars` characters every `step`, each
    character 1 or 2 pieces (the second unlabelled), random input ids per window."""
    rng = np.random.default_rng(seed)
    records = []
    for sentence_id, tags in enumerate(gold_tags):
        length = len(tags)
        starts = list(range(0, max(length - window_chars, 0) + 1, step))
        if starts[-1] + window_chars < length:
            starts.append(length - window_chars)
        for start in starts:
            end = min(start + window_chars, length)
            input_ids, label_ids, char_index = [CLS], [evaluation.IGNORE_ID], [-1]
            for c in range(start, end):
                for piece in range(rng.integers(1, 3)):
                    input_ids.append(int(rng.integers(3, VOCAB_SIZE)))
                    label_ids.append(LABEL_MAP.index(tags[c]) if piece == 0
                                     else evaluation.IGNORE_ID)
                    char_index.append(c if piece == 0 else -1)
            input_ids.append(SEP)
            label_ids.append(evaluation.IGNORE_ID)
            char_index.append(-1)
            records.append(dict(input_ids=input_ids, label_ids=label_ids, char_index=char_index,
                                sentence_id=sentence_id, window_start=start, window_end=end,
                                sentence_length=length))
    return records


def batch_records(records, batch_size, *, pad_label=evaluation.IGNORE_ID):
    """A tf.data.Dataset of padded dict batches in the make_dataset format."""
    batches = []
    for i in range(0, len(records), batch_size):
        chunk = records[i:i + batch_size]
        width = max(len(r["input_ids"]) for r in chunk)
        batch = {name: [] for name in ("input_ids", "attention_mask", "label_ids", "char_index",
                                       "sentence_id", "window_start", "window_end",
                                       "sentence_length")}
        for r in chunk:
            pad = width - len(r["input_ids"])
            batch["input_ids"].append(r["input_ids"] + [PAD] * pad)
            batch["attention_mask"].append([1] * len(r["input_ids"]) + [0] * pad)
            batch["label_ids"].append(r["label_ids"] + [pad_label] * pad)
            batch["char_index"].append(r["char_index"] + [-1] * pad)
            for name in ("sentence_id", "window_start", "window_end", "sentence_length"):
                batch[name].append(r[name])
        batches.append({k: np.asarray(v, np.int32) for k, v in batch.items()})

    def generator():
        yield from batches

    signature = {k: tf.TensorSpec([None, None] if v.ndim == 2 else [None], tf.int32)
                 for k, v in batches[0].items()}
    return tf.data.Dataset.from_generator(generator, output_signature=signature)


def expected_predictions(model, records, gold_tags):
    """Brute force: for every character, the window with the most context (ties: earlier)."""
    by_sentence = {}
    for r in records:
        by_sentence.setdefault(r["sentence_id"], []).append(r)
    expected = {}
    for sentence_id, windows in by_sentence.items():
        length = len(gold_tags[sentence_id])
        pred = []
        for c in range(length):
            best = None
            for w in sorted(windows, key=lambda w: w["window_start"]):
                if c not in w["char_index"]:
                    continue
                left = c - w["window_start"] if w["window_start"] > 0 else 10**9
                right = w["window_end"] - 1 - c if w["window_end"] < length else 10**9
                if best is None or min(left, right) > best[0]:
                    position = w["char_index"].index(c)
                    best = (min(left, right), w["input_ids"][position])
            pred.append(LABEL_MAP[int(np.argmax(model.table_value[best[1]]))])
        expected[sentence_id] = pred
    return expected


def expected_loss(model, records):
    total, count = 0.0, 0
    for r in records:
        for input_id, label in zip(r["input_ids"], r["label_ids"]):
            if label == evaluation.IGNORE_ID:
                continue
            logits = model.table_value[input_id].astype(np.float64)
            total += np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[label]
            count += 1
    return total / count


@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(1)
    gold_tags = [random_iob2(rng, rng.randint(1, 17)) for _ in range(23)]
    return gold_tags, make_windows(gold_tags)


def test_merge_rule_that_evaluate_relies_on():
    """data_pipeline.windows.merge_window_predictions, as documented: most context, ties to the
    earlier window."""
    def merge(spans, length):
        return merge_window_predictions(
            (0, s, e, length, np.arange(s, e), np.full(e - s, k)) for k, (s, e) in spans)[0]

    # [0, 6) and [4, 10) of 10: characters 4 and 5 have context 1 and 0 in the first (its start
    # is the sentence start: only the right side counts) and 0 and 1 in the second (its end is
    # the sentence end: only the left side counts).
    assert merge([(0, (0, 6)), (1, (4, 10))], 10).tolist() == [0] * 5 + [1] * 5
    # [0, 4), [2, 6), [4, 8) of 8: character 2 has context 1 in the first and 0 in the second,
    # character 3 has 0 and 1, character 4 has 1 in the second and 0 in the third.
    assert merge([(0, (0, 4)), (1, (2, 6)), (2, (4, 8))], 8).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    # A tie: [0, 5) and [2, 7) of 7; character 3 has context 1 in both and stays with the first,
    # whatever order the windows arrive in.
    assert merge([(1, (2, 7)), (0, (0, 5))], 7).tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_evaluate_merges_windows_and_scores(corpus):
    gold_tags, records = corpus
    assert any(r["window_start"] > 0 for r in records)  # the corpus really has several windows
    model = FakeTagger(VOCAB_SIZE, len(LABEL_MAP))
    result = evaluation.evaluate(model, batch_records(records, 4), LABEL_MAP)
    assert result.num_windows == len(records)

    expected = expected_predictions(model, records, gold_tags)
    assert [p.sentence_id for p in result.predictions] == list(range(len(gold_tags)))
    for prediction in result.predictions:
        assert prediction.pred == expected[prediction.sentence_id]
        assert prediction.gold == gold_tags[prediction.sentence_id]
        assert prediction.labelled.all()

    pred_tags = [expected[i] for i in range(len(gold_tags))]
    reference = seqeval_metrics(gold_tags, pred_tags)
    for key, value in reference.items():
        assert result.metrics[key] == value, key
    for key in ("f1/LOC", "f1/ORG", "f1/PER", "precision/PER", "recall/PER"):
        assert key in result.metrics
    correct = sum(g == p for gs, ps in zip(gold_tags, pred_tags) for g, p in zip(gs, ps))
    total = sum(len(g) for g in gold_tags)
    assert result.metrics["token_accuracy"] == correct / total
    assert 0.0 < result.metrics["token_accuracy"] < 1.0
    assert result.metrics["loss"] == pytest.approx(expected_loss(model, records), rel=1e-5)
    assert all(isinstance(v, float) for v in result.metrics.values())


def test_evaluate_ignores_padding(corpus):
    gold_tags, records = corpus
    model = FakeTagger(VOCAB_SIZE, len(LABEL_MAP))
    reference = evaluation.evaluate(model, batch_records(records, 4), LABEL_MAP)
    # Garbage labels on padding (not counted: attention 0, char_index -1) would change a loss that
    # counted padding; the fake model's compute_loss counts label != -100, so keep -100 there and
    # change the batch size instead: different padding, same scores.
    other = evaluation.evaluate(model, batch_records(records, 7), LABEL_MAP)
    assert other.metrics["token_accuracy"] == reference.metrics["token_accuracy"]
    assert other.metrics["f1"] == reference.metrics["f1"]
    assert other.metrics["loss"] == pytest.approx(reference.metrics["loss"], rel=1e-6)


def test_evaluate_unpacks_and_perfect_model_scores_one(corpus):
    gold_tags, records = corpus

    # Every labelled piece gets the input id 3 + its gold label, and the table maps that id to
    # the label: a perfect tagger.
    oracle_records = []
    for r in records:
        ids = [3 + label if label >= 0 else 3 + 7 for label in r["label_ids"]]
        oracle_records.append(dict(r, input_ids=ids))
    model = FakeTagger(VOCAB_SIZE, len(LABEL_MAP))
    model.table.assign(np.eye(VOCAB_SIZE, len(LABEL_MAP), k=-3, dtype=np.float32) * 10)
    model.table_value = model.table.numpy()
    metrics, predictions = evaluation.evaluate(model, batch_records(oracle_records, 5), LABEL_MAP)
    assert metrics["f1"] == 1.0 and metrics["token_accuracy"] == 1.0
    assert [p.pred for p in predictions] == gold_tags


def test_evaluate_with_gold_tags_and_max_batches(corpus):
    gold_tags, records = corpus
    model = FakeTagger(VOCAB_SIZE, len(LABEL_MAP))
    full = evaluation.evaluate(model, batch_records(records, 4), LABEL_MAP, gold_tags=gold_tags)
    plain = evaluation.evaluate(model, batch_records(records, 4), LABEL_MAP)
    assert full.metrics == plain.metrics

    # Drop the windows of sentence 0: with gold tags it is still scored, predicted all O.
    kept = [r for r in records if r["sentence_id"] != 0]
    missing = evaluation.evaluate(model, batch_records(kept, 4), LABEL_MAP, gold_tags=gold_tags)
    assert missing.predictions[0].pred == ["O"] * len(gold_tags[0])
    assert not missing.predictions[0].labelled.any()
    assert len(missing.predictions) == len(gold_tags)
    gold_entities = sum(c.gold for c in missing.entity_counts.values())
    assert gold_entities == sum(c.gold for c in full.entity_counts.values())

    short = evaluation.evaluate(model, batch_records(records, 4), LABEL_MAP, gold_tags=gold_tags,
                                max_batches=2)
    assert short.num_windows == 8
    assert len(short.predictions) < len(gold_tags)

    bad = [list(t) + ["O"] for t in gold_tags]
    with pytest.raises(ValueError, match="gold tags but the records"):
        evaluation.evaluate(model, batch_records(records, 4), LABEL_MAP, gold_tags=bad)


def test_evaluate_with_mirrored_strategy_matches_default(corpus):
    gold_tags, records = corpus
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        model = FakeTagger(VOCAB_SIZE, len(LABEL_MAP))
    reference = evaluation.evaluate(model, batch_records(records, 4), LABEL_MAP)
    # Batch 5 does not divide by 2 replicas, and the last batch is partial.
    distributed = evaluation.evaluate(model, batch_records(records, 5), LABEL_MAP,
                                      strategy=strategy)
    assert distributed.num_windows == len(records)
    assert [p.pred for p in distributed.predictions] == [p.pred for p in reference.predictions]
    for key, value in reference.metrics.items():
        assert distributed.metrics[key] == pytest.approx(value, rel=1e-6), key


def test_evaluate_does_not_retrace(corpus):
    _, records = corpus
    model = FakeTagger(VOCAB_SIZE, len(LABEL_MAP))
    evaluation.evaluate(model, batch_records(records, 4), LABEL_MAP)
    step = evaluation.eval_step(model, None)
    assert step.compiled.experimental_get_tracing_count() == 1  # batches of several shapes
    evaluation.evaluate(model, batch_records(records, 7), LABEL_MAP)
    assert evaluation.eval_step(model, None) is step
    assert step.compiled.experimental_get_tracing_count() == 1


def test_write_predictions(tmp_path):
    predictions = [
        evaluation.SentencePrediction(1, ["O", "B-PER"], ["O", "O"], np.ones(2, bool)),
        evaluation.SentencePrediction(0, ["B-LOC", "I-LOC", "O"], ["B-LOC", "I-LOC", "O"],
                                      np.ones(3, bool)),
    ]
    path = tmp_path / "sub" / "test_predictions.txt"
    evaluation.write_predictions(path, predictions, [list("中国人"), "小明"])
    assert path.read_text(encoding="utf-8") == (
        "中 B-LOC B-LOC\n国 I-LOC I-LOC\n人 O O\n\n小 O O\n明 O B-PER\n\n")
    assert [p.name for p in path.parent.iterdir()] == ["test_predictions.txt"]
    with pytest.raises(ValueError, match="sentence 0: 2 tokens but 3"):
        evaluation.write_predictions(path, predictions, ["中国", "小明"])


def test_format_report():
    counts = evaluation.count_entities([["B-PER", "O"]], [["B-PER", "B-LOC"]])
    report = evaluation.format_report({"token_accuracy": 0.5, "loss": 1.25}, counts)
    assert "PER" in report and "micro" in report and "0.6667" in report and "1.2500" in report


# ------------------------------------------------------------------------------------------------
# End to end: real preprocessing, input pipeline and tagger (tiny random BERT, CRF head)
# ------------------------------------------------------------------------------------------------


def test_evaluate_real_pipeline_and_crf_tagger(tmp_path, people_daily_dir, bert_chinese_dir):
    from data_pipeline.dataset import make_dataset
    from data_pipeline.manifest import load_manifest
    from data_pipeline.preprocess import preprocess
    from data_pipeline.tags import iob2_allowed_transitions
    from models import TaggerConfig, build_tagger

    chars, gold_tags = read_char_corpus(people_daily_dir / "example.dev")
    chars, gold_tags = chars[:12], gold_tags[:12]  # eager CRF decoding below is slow
    path = tmp_path / "dev.txt"
    path.write_text("".join("".join(f"{c} {t}\n" for c, t in zip(cs, ts)) + "\n"
                            for cs, ts in zip(chars, gold_tags)), encoding="utf-8")
    # 16 pieces per window: most sentences are cut into several overlapping windows.
    preprocess({"dev": path}, tmp_path / "shards", bert_chinese_dir, max_seq_length=16,
               stride=4, label_map=LABEL_MAP, num_workers=0)
    num_windows = load_manifest(tmp_path / "shards")["splits"]["dev"]["counts"]["windows"]
    assert num_windows > 2 * len(chars)

    vocab_size = sum(1 for _ in open(bert_chinese_dir / "vocab.txt", encoding="utf-8"))
    tiny_bert = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=37, vocab_size=vocab_size, max_position_embeddings=32)
    model = build_tagger(TaggerConfig(encoder_config=tiny_bert, label_map=LABEL_MAP,
                                      bilstm_layers=1, bilstm_units=8, head="crf"),
                         transition_constraints=iob2_allowed_transitions(LABEL_MAP))
    dataset = make_dataset(tmp_path / "shards", "dev", batch_size=8)
    result = evaluation.evaluate(model, dataset, LABEL_MAP)
    with_gold = evaluation.evaluate(model, dataset, LABEL_MAP, gold_tags=gold_tags)

    assert result.num_windows == num_windows
    assert [p.sentence_id for p in result.predictions] == list(range(len(chars)))
    # Merged record labels give back the source tags exactly.
    assert [p.gold for p in result.predictions] == gold_tags
    assert with_gold.metrics == result.metrics

    # Independently: run the model eagerly window by window and merge by brute force.
    records, loss_sum, count = [], 0.0, 0.0
    for batch in dataset:
        logits = model(dict(input_ids=batch["input_ids"],
                            attention_mask=batch["attention_mask"]), training=False)
        tag_ids, _ = model.decode(logits, batch["char_index"] >= 0)
        batch_loss, batch_count = model.compute_loss(logits, batch["label_ids"])
        loss_sum += float(batch_loss)
        count += float(batch_count)
        for row in range(batch["input_ids"].shape[0]):
            char_index = batch["char_index"][row].numpy().tolist()
            records.append(dict(sentence_id=int(batch["sentence_id"][row]),
                                window_start=int(batch["window_start"][row]),
                                window_end=int(batch["window_end"][row]),
                                char_index=char_index, tags=tag_ids[row].numpy().tolist()))
    for prediction in result.predictions:
        windows = sorted((r for r in records if r["sentence_id"] == prediction.sentence_id),
                         key=lambda r: r["window_start"])
        length = len(gold_tags[prediction.sentence_id])
        expected = []
        for c in range(length):
            best = None
            for w in windows:
                if c in w["char_index"]:
                    left = c - w["window_start"] if w["window_start"] > 0 else 10**9
                    right = w["window_end"] - 1 - c if w["window_end"] < length else 10**9
                    if best is None or min(left, right) > best[0]:
                        best = (min(left, right), w["tags"][w["char_index"].index(c)])
            expected.append(LABEL_MAP[best[1]])
        assert prediction.pred == expected, prediction.sentence_id
    assert result.metrics["loss"] == pytest.approx(loss_sum / count, rel=1e-5)
    reference = seqeval_metrics(gold_tags, [p.pred for p in result.predictions])
    for key, value in reference.items():
        assert result.metrics[key] == value, key
