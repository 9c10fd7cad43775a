"""Evaluation: entity P/R/F1 identical to seqeval's strict IOB2 mode, token accuracy and loss.

`evaluate` runs a tagger over a dataset of windows (see `data_pipeline.records`), merges the
per-window predictions back to one tag per character per sentence (with
`data_pipeline.windows.merge_window_predictions`: each character takes the tag of the window where
it has the most context), and scores the sentences.

Entities are extracted by `data_pipeline.tags.extract_entities`, exactly as
`seqeval.metrics.classification_report(..., mode="strict", scheme=IOB2)` does: an entity is a
`B-T` followed by the longest run of `I-T` of the same type; an `I-` that does not continue such
a run starts nothing and is simply dropped.

Scores are computed from entity counts in plain Python, with the same float operations as
seqeval, so the numbers are bit-identical to seqeval's (checked by
tests/trainer/test_evaluation.py).

Why one file of about 430 lines: its three sections (scores in plain Python, the compiled
evaluation step, `evaluate` and the reports) are the one path from model outputs to the F1 in
results.json, and are read and tested together against seqeval.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import tempfile
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from data_pipeline.records import FEATURES_KEY
from data_pipeline.tags import IGNORE_ID, OUTSIDE_TAG, entity_types, extract_entities
from data_pipeline.windows import merge_window_predictions

# ------------------------------------------------------------------------------------------------
# Entities and scores (pure Python, no TensorFlow)
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EntityCounts:
    """Entity counts of one type (or of all types): gold, predicted and correctly predicted."""

    gold: int = 0
    predicted: int = 0
    correct: int = 0

    def add(self, other: EntityCounts) -> None:
        self.gold += other.gold
        self.predicted += other.predicted
        self.correct += other.correct

    def scores(self) -> tuple[float, float, float]:
        """(precision, recall, F1), 0.0 where undefined, with seqeval's float operations."""
        precision = self.correct / self.predicted if self.predicted else 0.0
        recall = self.correct / self.gold if self.gold else 0.0
        denominator = precision + recall
        f1 = 2.0 * precision * recall / denominator if denominator else 0.0
        return precision, recall, f1


def count_entities(gold_sequences: Iterable[Sequence[str]],
                   pred_sequences: Iterable[Sequence[str]]) -> dict[str, EntityCounts]:
    """Counts gold, predicted and correct entities per type over many sentences.

    Args:
      gold_sequences, pred_sequences: parallel sequences of sentences, each a sequence of IOB2 tag
        strings; a gold sentence and its prediction must have the same length.

    Returns:
      {type: EntityCounts} for every type that occurs in the gold or the predicted entities,
      sorted by type name.

    Raises:
      ValueError: different numbers of sentences, a sentence whose lengths differ, or a bad tag.
    """
    counts: dict[str, EntityCounts] = collections.defaultdict(EntityCounts)
    gold_sequences, pred_sequences = list(gold_sequences), list(pred_sequences)
    if len(gold_sequences) != len(pred_sequences):
        raise ValueError(f"{len(gold_sequences)} gold sentences but {len(pred_sequences)} "
                         "predicted ones")
    for index, (gold, pred) in enumerate(zip(gold_sequences, pred_sequences)):
        if len(gold) != len(pred):
            raise ValueError(f"sentence {index}: {len(gold)} gold tags but {len(pred)} predicted")
        gold_entities = set(extract_entities(gold))
        pred_entities = set(extract_entities(pred))
        for entity in gold_entities:
            counts[entity.type].gold += 1
        for entity in pred_entities:
            counts[entity.type].predicted += 1
        for entity in gold_entities & pred_entities:
            counts[entity.type].correct += 1
    return dict(sorted(counts.items()))


def entity_metrics(counts: Mapping[str, EntityCounts], *,
                   entity_types: Iterable[str] = ()) -> dict[str, float]:
    """Turns per-type entity counts into micro and per-type precision, recall and F1.

    Args:
      counts: {type: EntityCounts}, as from `count_entities`.
      entity_types: types to report even when they have no gold and no predicted entity (scored
        0.0, as seqeval would if they were present), so that every evaluation writes the same keys.

    Returns:
      {"precision", "recall", "f1"} (micro averages, equal to seqeval's `precision_score` etc.
      with mode="strict", scheme=IOB2) and {"precision/T", "recall/T", "f1/T"} for each type T
      (equal to the rows of seqeval's `classification_report`).
    """
    total = EntityCounts()
    for type_counts in counts.values():
        total.add(type_counts)
    metrics = dict(zip(("precision", "recall", "f1"), total.scores()))
    for entity_type in sorted(set(counts) | set(entity_types)):
        precision, recall, f1 = counts.get(entity_type, EntityCounts()).scores()
        metrics[f"precision/{entity_type}"] = precision
        metrics[f"recall/{entity_type}"] = recall
        metrics[f"f1/{entity_type}"] = f1
    return metrics


# ------------------------------------------------------------------------------------------------
# evaluate()
# ------------------------------------------------------------------------------------------------


class SentencePrediction(NamedTuple):
    """The merged prediction for one sentence.

    Attributes:
      sentence_id: 0-based index of the sentence in its split.
      pred: predicted IOB2 tags, one per character (or word) of the sentence.
      gold: the gold tags that were scored: `gold_tags[sentence_id]` when `evaluate` was given
        gold tags, else the labels of the records ("O" where no piece carried a label).
      labelled: bool [len(pred)], True where the records carry a label for the character (always,
        for records made by data_pipeline); False for a sentence the dataset never yielded.
    """

    sentence_id: int
    pred: list[str]
    gold: list[str]
    labelled: np.ndarray


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """What `evaluate` returns; also unpacks as `metrics, predictions = evaluate(...)`.

    Attributes:
      metrics: {"f1", "precision", "recall"} (entity micro averages), {"f1/T", "precision/T",
        "recall/T"} for every entity type T of the label map (and any other type found),
        "token_accuracy" (merged characters that carry a label), "loss" (sum of the model's
        loss over all counted tokens of all windows / their number). All Python floats.
      predictions: one SentencePrediction per sentence, sorted by sentence_id.
      entity_counts: {type: EntityCounts} (gold, predicted, correct), for reports.
      num_windows: how many records (windows) were evaluated.
    """

    metrics: dict[str, float]
    predictions: list[SentencePrediction]
    entity_counts: dict[str, EntityCounts]
    num_windows: int

    def __iter__(self):
        return iter((self.metrics, self.predictions))


_MODEL_INPUTS = ("input_ids", "attention_mask", "label_ids", "char_index")  # int32 [B, T]
_PASSED_THROUGH = ("label_ids", "char_index", "sentence_id", "window_start", "window_end",
                   "sentence_length")

# model -> (strategy, tf.function) so repeated evaluations do not retrace. The function holds the
# model through a weak reference only, so the cache never keeps a model alive.
_STEP_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _make_eval_step(model, strategy, with_features: bool = False):
    """The compiled evaluation step: batch dict -> dict of tag_ids int32 [B, T], loss_sum and
    count float32 [] and the batch's `_PASSED_THROUGH` values (per replica under a strategy).

    Traced without autograph: the tagger's code needs none, and autograph triples the tracing
    time of a BERT + CRF tagger (about 25 s instead of 7.5 s on 2 CPU cores). Without a strategy
    an input signature with unknown batch and length means exactly one trace.

    With `with_features` the batches come from a feature cache: the step runs `model.tag` on the
    cached encoder output (`features` float16 [B, T, F]) instead of the encoder.
    """
    import tensorflow as tf

    model_ref = weakref.ref(model)
    inputs = _MODEL_INPUTS + ((FEATURES_KEY,) if with_features else ())
    signature = [tf.TensorSpec([None, None], tf.int32)] * len(_MODEL_INPUTS)
    if with_features:
        signature.append(tf.TensorSpec([None, None, None], tf.float16))

    def model_step(input_ids, attention_mask, label_ids, char_index, features=None):
        tagger = model_ref()
        if features is None:
            logits = tagger(dict(input_ids=input_ids, attention_mask=attention_mask),
                            training=False)
        else:
            logits = tagger.tag(tagger.encoded_from_features(features), attention_mask,
                                training=False)
        tag_ids, _ = tagger.decode(logits, char_index >= 0)  # label mask: labelled positions
        loss_sum, count = tagger.compute_loss(logits, label_ids)
        return dict(tag_ids=tf.cast(tag_ids, tf.int32), loss_sum=tf.cast(loss_sum, tf.float32),
                    count=tf.cast(count, tf.float32))

    if strategy is None:
        compiled = tf.function(model_step, autograph=False, input_signature=signature)

        def step(batch):
            outputs = compiled(*(tf.cast(batch[name], spec.dtype)
                                 for name, spec in zip(inputs, signature)))
            outputs.update({name: batch[name] for name in _PASSED_THROUGH})
            return outputs

        step.compiled = compiled  # for tests: compiled.experimental_get_tracing_count()
        return step

    def replica_step(batch):
        outputs = model_step(*(tf.cast(batch[name], spec.dtype)
                               for name, spec in zip(inputs, signature)))
        outputs.update({name: batch[name] for name in _PASSED_THROUGH})
        return outputs

    def distributed_step(batch):
        return strategy.run(replica_step, args=(batch,))

    return tf.function(distributed_step, autograph=False, reduce_retracing=True)


def eval_step(model, strategy, with_features: bool = False):
    """The model's compiled evaluation step (see `_make_eval_step`), built once per model and
    reused while the strategy and the input kind stay the same, so evaluating every N steps
    traces once."""
    cached = _STEP_CACHE.get(model)
    if cached is not None and cached[0] is strategy and cached[1] == with_features:
        return cached[2]
    step = _make_eval_step(model, strategy, with_features)
    _STEP_CACHE[model] = (strategy, with_features, step)
    return step


def _local_values(outputs, strategy) -> list[dict[str, np.ndarray]]:
    """Per-replica outputs of one step as numpy, one dict per local replica."""
    if strategy is None:
        return [{name: np.asarray(value) for name, value in outputs.items()}]
    per_name = {name: strategy.experimental_local_results(value)
                for name, value in outputs.items()}
    num_replicas = len(next(iter(per_name.values())))
    return [{name: np.asarray(values[r]) for name, values in per_name.items()}
            for r in range(num_replicas)]


def evaluate(model, dataset, label_map: Sequence[str], *, strategy=None,
             gold_tags: Sequence[Sequence[str]] | None = None,
             max_batches: int | None = None,
             progress: Callable[[int], Any] | None = None) -> EvaluationResult:
    """Runs `model` over `dataset` and scores the merged per-sentence predictions.

    Args:
      model: a tagger with the models/ API: `model(dict(input_ids, attention_mask), training)` ->
        logits float32 [B, T, K]; `model.decode(logits, label_mask)` -> (tag_ids int32 [B, T],
        scores float32 [B]); `model.compute_loss(logits, label_ids)` -> (loss_sum, count) float32
        scalars.
      dataset: batches as made by `data_pipeline.dataset.make_dataset` (dict of input_ids,
        attention_mask, label_ids, char_index int32 [B, T] and sentence_id, window_start,
        window_end, sentence_length int32 [B]); not repeated. With a strategy, either a
        tf.data.Dataset (distributed here) or an already distributed dataset.
      label_map: tag strings, index = tag id.
      strategy: optional tf.distribute.Strategy; steps run with `strategy.run` and the values of
        all local replicas are gathered. (Multi-worker: each worker scores what its own dataset
        yields.)
      gold_tags: optional gold IOB2 tags of the source sentences, indexed by sentence_id. When
        given, entity scores use them (so characters that lost their label in tokenization still
        count), and every sentence is scored: one the dataset never yielded is predicted all "O",
        with a warning (unless max_batches cut the evaluation short; then only sentences seen are
        scored).
      max_batches: stop after this many batches (for quick checks in tests).
      progress: called after each batch with the number of windows scored so far (e.g.
        `trainer.progress.ProgressBar.update`, whose total is the split's window count).

    Returns:
      An EvaluationResult (metrics, predictions, entity_counts, num_windows); see there.

    Raises:
      ValueError: inconsistent windows, or gold_tags whose length does not match a sentence.
    """
    import tensorflow as tf

    label_map = list(label_map)
    spec = getattr(dataset, "element_spec", None)
    with_features = isinstance(spec, Mapping) and FEATURES_KEY in spec
    step = eval_step(model, strategy, with_features)
    if strategy is not None and isinstance(dataset, tf.data.Dataset):
        dataset = strategy.experimental_distribute_dataset(dataset)

    # sentence_id -> [(window_start, window_end, sentence_length, char_index, tag_ids,
    # label_ids)], the last three int [T] rows of the batch.
    windows: dict[int, list[tuple]] = collections.defaultdict(list)
    loss_sum = 0.0
    loss_count = 0.0
    num_windows = 0
    truncated = False
    for batch_index, batch in enumerate(dataset):
        if max_batches is not None and batch_index >= max_batches:
            truncated = True
            break
        for values in _local_values(step(batch), strategy):
            loss_sum += float(values["loss_sum"])
            loss_count += float(values["count"])
            for row in range(values["sentence_id"].shape[0]):
                windows[int(values["sentence_id"][row])].append(tuple(
                    values[name][row] for name in ("window_start", "window_end",
                                                   "sentence_length", "char_index", "tag_ids",
                                                   "label_ids")))
                num_windows += 1
        if progress is not None:
            progress(num_windows)

    correct_tokens = 0
    counted_tokens = 0
    predictions = []
    for sentence_id in sorted(windows):
        spans = [(sentence_id, int(start), int(end), int(length), char_index)
                 for start, end, length, char_index, _, _ in windows[sentence_id]]
        try:
            [pred_ids] = merge_window_predictions(
                span + (w[4],) for span, w in zip(spans, windows[sentence_id])).values()
            [gold_ids] = merge_window_predictions(
                span + (w[5],) for span, w in zip(spans, windows[sentence_id])).values()
        except ValueError:
            if truncated:  # max_batches cut off some of its windows: not scored
                continue
            raise
        labelled = gold_ids != IGNORE_ID
        correct_tokens += int(np.sum(pred_ids[labelled] == gold_ids[labelled]))
        counted_tokens += int(np.sum(labelled))
        pred = [label_map[i] for i in pred_ids]
        if gold_tags is not None:
            gold = list(gold_tags[sentence_id])
            if len(gold) != len(pred):
                raise ValueError(f"sentence {sentence_id}: {len(gold)} gold tags but the records "
                                 f"say it has {len(pred)} characters")
        else:
            gold = [label_map[i] if i != IGNORE_ID else OUTSIDE_TAG for i in gold_ids]
        predictions.append(SentencePrediction(sentence_id, pred, gold, labelled))

    if gold_tags is not None and not truncated and len(windows) < len(gold_tags):
        missing = [i for i in range(len(gold_tags)) if i not in windows]
        logging.warning("evaluate: %d of %d sentences had no window in the dataset (first: %s); "
                        "they are scored as predicted all 'O'", len(missing), len(gold_tags),
                        missing[:5])
        for sentence_id in missing:
            gold = list(gold_tags[sentence_id])
            predictions.append(SentencePrediction(sentence_id, [OUTSIDE_TAG] * len(gold), gold,
                                                  np.zeros([len(gold)], bool)))
        predictions.sort(key=lambda p: p.sentence_id)

    counts = count_entities([p.gold for p in predictions], [p.pred for p in predictions])
    metrics = entity_metrics(counts, entity_types=entity_types(label_map))
    metrics["token_accuracy"] = correct_tokens / counted_tokens if counted_tokens else 0.0
    metrics["loss"] = loss_sum / loss_count if loss_count else math.nan
    return EvaluationResult(metrics, predictions, counts, num_windows)


# ------------------------------------------------------------------------------------------------
# Prediction files
# ------------------------------------------------------------------------------------------------


def write_predictions(path: str | os.PathLike, predictions: Sequence[SentencePrediction],
                      sentences: Sequence[Sequence[str]]) -> None:
    """Writes predictions as `char gold pred` lines with a blank line after each sentence.

    The format is the one conlleval and the corpus reader (`char` format, two tag columns) read:

        中 B-LOC B-LOC
        国 I-LOC I-LOC
        人 O O
        <blank line>

    Tokens are written verbatim: the corpus reader (`data_pipeline.corpus`, `char` format) splits
    columns on ASCII spaces and tabs only, so a full-width space U+3000 token reads back intact.
    The file is written to a temporary name and renamed, so it is never seen half-written.

    Args:
      path: the output file.
      predictions: as in `EvaluationResult.predictions`.
      sentences: the source tokens (characters) of the split, indexed by sentence_id, e.g. the
        `tokens` of `data_pipeline.corpus.Sentence`s.

    Raises:
      ValueError: a sentence whose number of tokens differs from its number of tags.
    """
    path = os.fspath(path)
    lines = []
    for prediction in sorted(predictions, key=lambda p: p.sentence_id):
        tokens = sentences[prediction.sentence_id]
        if len(tokens) != len(prediction.pred):
            raise ValueError(f"sentence {prediction.sentence_id}: {len(tokens)} tokens but "
                             f"{len(prediction.pred)} predicted tags")
        for token, gold, pred in zip(tokens, prediction.gold, prediction.pred):
            lines.append(f"{token} {gold} {pred}\n")
        lines.append("\n")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".predictions-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.writelines(lines)
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise


def format_report(metrics: Mapping[str, Any], entity_counts: Mapping[str, EntityCounts]) -> str:
    """A seqeval-like plain-text table of per-type and micro scores, for logs."""
    rows = [f"{'type':>8} {'precision':>9} {'recall':>9} {'f1':>9} {'gold':>7} {'pred':>7}"]
    total = EntityCounts()
    for entity_type, counts in entity_counts.items():
        total.add(counts)
        precision, recall, f1 = counts.scores()
        rows.append(f"{entity_type:>8} {precision:9.4f} {recall:9.4f} {f1:9.4f} "
                    f"{counts.gold:7d} {counts.predicted:7d}")
    precision, recall, f1 = total.scores()
    rows.append(f"{'micro':>8} {precision:9.4f} {recall:9.4f} {f1:9.4f} "
                f"{total.gold:7d} {total.predicted:7d}")
    if "token_accuracy" in metrics:
        rows.append(f"token accuracy {metrics['token_accuracy']:.4f}, "
                    f"loss {metrics.get('loss', math.nan):.4f}")
    return "\n".join(rows)
