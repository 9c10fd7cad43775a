"""The reference every user compares against: transformers' TFBertForTokenClassification + fit.

Trains that network (the encoder loaded from `--pretrained`, a new classifier on top) with
plain Keras `compile` + `fit` on this project's preprocessed People's Daily shards (the manifest
and shards that `trainer.cache.ensure_preprocessed` writes under `data_cache/<fingerprint>/`, one
piece per character), then scores dev and test with the project's own `trainer.evaluation`:
windows merged back to one tag per character exactly as the trainer does, entity F1 identical to
seqeval's strict IOB2 mode. Test is scored once, with the final weights (what `fit` leaves).

transformers 5 has no TensorFlow models, so the network is built here as
TFBertForTokenClassification built it (`TokenClassifier`): the encoder (this project's
`models.transformer`, which tests/models/test_transformer_equivalence.py shows computes what
transformers 4.54.1's TF BERT computed, hidden states and gradients), dropout, and a Dense
classifier initialised as transformers initialised it. The archived runs (docs/runs/hf_*, and
iso_*, kashgari_4k) were made with transformers 4.54.1's TFBertForTokenClassification and
TFBertModel themselves; the recipes, flags and evaluation are unchanged.

Three recipes; flags move one cause at a time from the blog's to the reference:

    what             --recipe=reference (issue 9)            --recipe=blog (the failing one)
    loss             SparseCategoricalCrossentropy            categorical_crossentropy on one-hot
                     (from_logits=True)                       labels, fed logits (from_logits=False)
    learning rate    Adam 5e-5, linear decay to 0             Adam 1e-3 (Keras default), constant
    padding          padding, special tokens and              labelled "O" and counted (weight 1)
                     continuation pieces: sample weight 0
    fit's metric     accuracy over the counted positions      accuracy over every padded position

    --from_logits / --nofrom_logits, --learning_rate, --lr_schedule=linear|constant,
    --warmup_proportion, --mask_padding / --nomask_padding override the recipe's choice.

    --recipe=kashgari: the frozen recipe of the same experiment, as kashgari 1.x builds its
    BiLSTM_Model on a BERTEmbedding: the encoder frozen (not trained, but run on every step, as
    `fit` does), its last 4 layers concatenated, a BiLSTM of 128 units, dropout 0.4, a softmax
    Dense; `compile(loss='categorical_crossentropy', optimizer='adam', metrics=['accuracy'])` on
    one-hot labels, which is right here (the model outputs probabilities); Adam 1e-3; padding
    labelled "O" and counted (kashgari gives it a <PAD> label of its own, also counted).

Batches are padded to `--pad_to` (128) positions, the blog's fixed length. results.json holds
entity P/R/F1 micro and per type (the project's evaluation), the token accuracy over labelled
characters (the project's) and over every padded position with padding labelled "O" (the blog's),
the fit history and the wall time; TensorBoard scalars (dev f1 per epoch) go to --run_dir.

A long `fit` survives being killed: `tf.keras.callbacks.BackupAndRestore` saves the weights, the
optimizer and the position in the epoch to RUN_DIR/backup every `--backup_every_steps` steps, and
the same command run again resumes from there (the steps after the last backup are redone); the
backup is deleted once results.json is written. `fit_seconds` sums the fit time of every process
that worked on the run (RUN_DIR/fit_clock.json), `wall_seconds` adds the last one's setup and
evaluation. `--train_file` trains on another corpus file than the trainer's default (e.g. the
4,000-sentence subset of docs/finetune_4k_study.md, so both frameworks see the same sentences).

    python benchmarks/hf_reference.py --train_sentences=4000 --epochs=3 --run_dir=runs/hf_ref_4k
    python benchmarks/hf_reference.py --recipe=blog --train_sentences=4000 --run_dir=runs/hf_blog
    python benchmarks/hf_reference.py --recipe=blog --from_logits --run_dir=runs/hf_blog_logits
    python benchmarks/hf_reference.py --train_sentences=300 --epochs=1 --eval_max_batches=4 \\
        --run_dir=runs/hf_smoke                               # a smoke test, a few minutes on CPU

From another script (e.g. to time N fit steps):

    from benchmarks.hf_reference import prepare_manifest, time_fit_steps
    manifest_dir = prepare_manifest()                  # preprocesses once, then reuses the cache
    print(time_fit_steps(manifest_dir, num_steps=20, batch_size=32))

or from the shell: `python benchmarks/hf_reference.py --time_fit_steps=20`.

or with the pieces: `build_reference_model(...)`, `fit_dataset(manifest_dir, "train", 32)`.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
import weakref
from typing import Any, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# The encoder is a Keras 2 (tf-keras) layer: `models` chooses Keras 2 for tf.keras before
# anything here touches it (models/__init__.py, BUILD.md). Never `import keras`.
import models  # noqa: E402,F401
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from data_pipeline.dataset import make_dataset  # noqa: E402
from data_pipeline.manifest import load_manifest  # noqa: E402
from data_pipeline.tags import IGNORE_ID  # noqa: E402

DEFAULT_PRETRAINED = "../shared/models/multilingual-e5-small-zh"
RECIPES = {
    # from_logits, learning_rate, lr_schedule, mask_padding, one_hot (categorical_crossentropy)
    "reference": dict(from_logits=True, learning_rate=5e-5, lr_schedule="linear",
                      mask_padding=True, one_hot=False),
    "blog": dict(from_logits=False, learning_rate=1e-3, lr_schedule="constant",
                 mask_padding=False, one_hot=True),
    # The model outputs softmax probabilities, so from_logits=False is the right loss here.
    "kashgari": dict(from_logits=False, learning_rate=1e-3, lr_schedule="constant",
                     mask_padding=False, one_hot=True),
}
KASHGARI_LAYERS, KASHGARI_UNITS, KASHGARI_DROPOUT = 4, 128, 0.4


# ------------------------------------------------------------------------------------------------
# Data: the trainer's shards as (x, y, sample_weight) batches for fit
# ------------------------------------------------------------------------------------------------


def prepare_manifest(*, pretrained: str = DEFAULT_PRETRAINED, max_seq_length: int = 128,
                     stride: int = 32, data_cache_dir: str = "data_cache",
                     extra_flags: Sequence[str] = ()) -> str:
    """Preprocesses People's Daily (the trainer's default corpus files) for `pretrained`'s
    tokenizer exactly as `trainer.main` would, or reuses the cached shards.

    Args:
      pretrained: encoder (and tokenizer) directory; `../shared/...` resolves as in the trainer.
      max_seq_length, stride: window settings (part of the cache fingerprint).
      data_cache_dir: the trainer's cache root.
      extra_flags: more trainer flags, e.g. ["--train_file=..."].

    Returns:
      The directory holding manifest.json and the shards.
    """
    from trainer import config as config_lib
    from trainer import cache

    config = config_lib.parse_flags([
        f"--pretrained={pretrained}", f"--max_seq_length={max_seq_length}",
        f"--stride={stride}", f"--data_cache_dir={data_cache_dir}", *extra_flags])
    return cache.ensure_preprocessed(config, log=logging.info)


def choose_sentences(manifest_dir: str, split: str, num_sentences: int, *,
                     seed: int = 0) -> np.ndarray | None:
    """A random subset of `num_sentences` sentence ids of `split` (sorted), or None for all.

    Returns:
      int64 [num_sentences], or None when num_sentences is 0 or covers the split.
    """
    total = int(load_manifest(manifest_dir)["splits"][split]["counts"]["sentences"])
    if not num_sentences or num_sentences >= total:
        return None
    return np.sort(np.random.default_rng(seed).choice(total, num_sentences, replace=False))


def fit_dataset(manifest_dir: str, split: str, batch_size: int, pad_to: int = 128, *,
                sentence_ids: Sequence[int] | None = None, shuffle: bool = True, seed: int = 0,
                mask_padding: bool = True, one_hot: bool = False,
                repeat: bool = False) -> tf.data.Dataset:
    """Batches for `model.fit`: (x, y, sample_weight), every batch padded to `pad_to`.

    Args:
      manifest_dir: a preprocessed directory (manifest.json + shards), e.g. from
        `prepare_manifest`; its max_seq_length must be <= pad_to.
      split: "train", "dev" or "test".
      batch_size: windows per batch (the last batch of an epoch may be smaller).
      pad_to: the fixed padded length T.
      sentence_ids: keep only the windows of these sentences (None: all).
      shuffle, seed: shuffle all windows of the split, anew every epoch.
      mask_padding: True: sample weight 1 on labelled positions (the first piece of each
        character) and 0 on padding, special tokens and continuation pieces. False: those
        positions are labelled "O" (id 0) and counted like the rest, as the blog did.
      one_hot: labels one-hot (for categorical_crossentropy) instead of sparse ids.
      repeat: repeat forever (for timing a fixed number of steps).

    Returns:
      A dataset of ({"input_ids", "attention_mask", "token_type_ids": int32 [B, T]},
      labels int32 [B, T] (or float32 [B, T, K] one-hot), sample_weight float32 [B, T]).
    """
    manifest = load_manifest(manifest_dir)
    num_labels = len(manifest["label_map"])
    outside = manifest["label_map"].index("O")
    windows = make_dataset(manifest_dir, split, batch_size=256, bucketing=False,
                           pad_to_length=pad_to, shuffle=False).unbatch()
    if sentence_ids is not None:
        total = int(manifest["splits"][split]["counts"]["sentences"])
        keep = np.zeros([total], bool)
        keep[np.asarray(sentence_ids, np.int64)] = True
        keep = tf.constant(keep)
        windows = windows.filter(lambda w: tf.gather(keep, w["sentence_id"]))
    windows = windows.cache()
    if shuffle:
        buffer = int(manifest["splits"][split]["counts"]["windows"])
        windows = windows.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        windows = windows.repeat()

    def to_fit(batch):
        label_ids = batch["label_ids"]
        counted = label_ids != IGNORE_ID
        labels = tf.where(counted, label_ids, outside)  # [B, T]
        if mask_padding:
            weights = tf.cast(counted, tf.float32)
        else:
            weights = tf.ones_like(labels, tf.float32)
        if one_hot:
            labels = tf.one_hot(labels, num_labels, dtype=tf.float32)  # [B, T, K]
        x = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
             "token_type_ids": tf.zeros_like(batch["input_ids"])}
        return x, labels, weights

    return windows.batch(batch_size).map(to_fit, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


def count_windows(manifest_dir: str, split: str,
                  sentence_ids: Sequence[int] | None = None) -> int:
    """Number of windows of `split` (of the given sentences only, if given)."""
    manifest = load_manifest(manifest_dir)
    if sentence_ids is None:
        return int(manifest["splits"][split]["counts"]["windows"])
    wanted = set(int(i) for i in sentence_ids)
    count = 0
    for batch in make_dataset(manifest_dir, split, batch_size=1024, shuffle=False):
        count += sum(int(i) in wanted for i in batch["sentence_id"].numpy())
    return count


# ------------------------------------------------------------------------------------------------
# The model and its compile() as each recipe has it
# ------------------------------------------------------------------------------------------------


class WarmUp(tf.keras.optimizers.schedules.LearningRateSchedule):
    """transformers' TF `WarmUp` (gone with its TF code in v5): `learning_rate * step /
    warmup_steps` for the first warmup_steps, then `after_warmup(step - warmup_steps)`."""

    def __init__(self, learning_rate: float, after_warmup, warmup_steps: int):
        super().__init__()
        self.learning_rate = float(learning_rate)
        self.after_warmup = after_warmup
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        """step: scalar tensor (updates done so far) -> float32 scalar."""
        step = tf.cast(step, tf.float32)
        warmup = float(self.warmup_steps)
        return tf.cond(step < warmup, lambda: self.learning_rate * step / warmup,
                       lambda: tf.cast(self.after_warmup(step - warmup), tf.float32))

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


def learning_rate_schedule(learning_rate: float, *, total_steps: int, schedule: str = "linear",
                           warmup_steps: int = 0):
    """Adam's learning rate: constant, or linear decay to 0 over total_steps (after an optional
    linear warmup, transformers' WarmUp)."""
    if schedule == "constant":
        rate = learning_rate
    elif schedule == "linear":
        rate = tf.keras.optimizers.schedules.PolynomialDecay(
            learning_rate, decay_steps=max(total_steps - warmup_steps, 1), end_learning_rate=0.0,
            power=1.0)
    else:
        raise ValueError(f"lr_schedule={schedule!r}: expected linear or constant")
    if warmup_steps:
        if schedule == "constant":
            rate = tf.keras.optimizers.schedules.PolynomialDecay(learning_rate, 1, learning_rate)
        rate = WarmUp(learning_rate, rate, warmup_steps)
    return rate


class TokenClassifier(tf.keras.Model):
    """TFBertForTokenClassification's network: encoder -> dropout -> Dense(K) logits.

    The encoder is `models.transformer`'s, without pooler (as TFBertForTokenClassification's,
    built with add_pooling_layer=False); the dropout rate is config.json's classifier_dropout,
    else hidden_dropout_prob; the classifier's kernel is drawn from a truncated normal with
    config.json's initializer_range, its bias is 0 (transformers' `get_initializer`).
    """

    def __init__(self, num_labels: int, *, pretrained: str = DEFAULT_PRETRAINED):
        super().__init__()
        from models.transformer import load_transformer
        from models.transformer.files import resolve_config

        directory = resolve_path(pretrained)
        self.encoder = load_transformer(pretrained=directory)
        config = self.encoder.config
        values = json.loads((resolve_config(directory) / "config.json").read_text("utf-8"))
        rate = values.get("classifier_dropout")
        self.dropout = tf.keras.layers.Dropout(
            config.hidden_dropout_prob if rate is None else float(rate))
        self.classifier = tf.keras.layers.Dense(
            num_labels, name="classifier",
            kernel_initializer=tf.keras.initializers.TruncatedNormal(
                stddev=config.initializer_range))

    def call(self, inputs: dict, training: bool = False) -> tf.Tensor:
        """inputs: input_ids, attention_mask (token_type_ids) int32 [B, T] -> logits
        [B, T, K] in the compute dtype."""
        [hidden] = self.encoder(inputs["input_ids"], inputs["attention_mask"], training=training,
                                num_hidden_states=1,
                                token_type_ids=inputs.get("token_type_ids"))["hidden_states"]
        return self.classifier(self.dropout(hidden, training=training))


class KashgariStyleTagger(tf.keras.Model):
    """kashgari 1.x's BiLSTM_Model on a frozen BERTEmbedding, in tf-keras.

    The encoder's last `layers` hidden states concatenated [B, T, layers * H] -> BiLSTM(units,
    return_sequences) -> Dropout -> Dense(K, softmax). The encoder is frozen (trainable=False:
    `fit` computes no gradient for it) but, as in kashgari, runs on every step. Like kashgari's,
    the BiLSTM sees every padded position (no mask).
    """

    def __init__(self, num_labels: int, *, pretrained: str = DEFAULT_PRETRAINED,
                 layers: int = KASHGARI_LAYERS, units: int = KASHGARI_UNITS,
                 dropout: float = KASHGARI_DROPOUT):
        super().__init__()
        from models.transformer import load_transformer

        self.encoder = load_transformer(pretrained=resolve_path(pretrained))
        self.encoder.trainable = False
        self.layers_used = layers
        self.bilstm = tf.keras.layers.Bidirectional(
            tf.keras.layers.LSTM(units, return_sequences=True))
        self.dropout = tf.keras.layers.Dropout(dropout)
        self.classifier = tf.keras.layers.Dense(num_labels, activation="softmax")

    def call(self, inputs: dict, training: bool = False) -> tf.Tensor:
        """inputs: input_ids, attention_mask (token_type_ids) int32 [B, T] -> probabilities
        float32 [B, T, K]."""
        hidden_states = self.encoder(inputs["input_ids"], inputs["attention_mask"],
                                     training=False, num_hidden_states=self.layers_used,
                                     token_type_ids=tf.zeros_like(inputs["input_ids"]))
        features = tf.concat(hidden_states["hidden_states"], axis=-1)
        hidden = self.dropout(self.bilstm(features, training=training), training=training)
        return self.classifier(hidden)


def build_reference_model(num_labels: int, *, pretrained: str = DEFAULT_PRETRAINED,
                          recipe: str = "reference", learning_rate: float | None = None,
                          lr_schedule: str | None = None, from_logits: bool | None = None,
                          one_hot: bool | None = None, total_steps: int = 1000,
                          warmup_steps: int = 0):
    """TFBertForTokenClassification's network (`TokenClassifier`) from `pretrained`, compiled as
    `recipe` does it.

    Args:
      num_labels: tags K (the classifier is newly initialised).
      pretrained: directory (or hub name) of a BERT-family checkpoint (safetensors or h5).
      recipe: "reference", "blog" or "kashgari" (see the module docstring); the other
        arguments, when not None, override the recipe's choice. "kashgari" builds a
        `KashgariStyleTagger` instead.
      learning_rate, lr_schedule ("linear" | "constant"), warmup_steps, total_steps: Adam's
        schedule (Adam on every weight, Keras defaults otherwise).
      from_logits: the loss's from_logits (the model outputs logits).
      one_hot: categorical_crossentropy on one-hot labels (blog) instead of the sparse loss.

    Returns:
      The compiled model (metrics=["accuracy"]; with sample weights it is weighted).
    """
    settings = dict(RECIPES[recipe])
    for name, value in (("learning_rate", learning_rate), ("lr_schedule", lr_schedule),
                        ("from_logits", from_logits), ("one_hot", one_hot)):
        if value is not None:
            settings[name] = value
    if recipe == "kashgari":
        model = KashgariStyleTagger(num_labels, pretrained=pretrained)
    else:
        model = TokenClassifier(num_labels, pretrained=pretrained)
    if settings["one_hot"]:
        if settings["from_logits"]:
            loss = tf.keras.losses.CategoricalCrossentropy(from_logits=True)
        else:
            loss = "categorical_crossentropy"  # the blog: fed logits, expects probabilities
    else:
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=settings["from_logits"])
    rate = learning_rate_schedule(settings["learning_rate"], total_steps=total_steps,
                                  schedule=settings["lr_schedule"], warmup_steps=warmup_steps)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=rate), loss=loss,
                  metrics=["accuracy"])
    return model


def resolve_path(path: str) -> str:
    """`../shared/...` and repo-relative paths as the trainer resolves them."""
    from trainer.config import resolve_input_path

    resolved = resolve_input_path(path)
    return resolved if os.path.exists(resolved) else path


def time_fit_steps(manifest_dir: str, *, num_steps: int = 20, batch_size: int = 32,
                   pad_to: int = 128, warmup_steps: int = 2, recipe: str = "reference",
                   pretrained: str = DEFAULT_PRETRAINED, model=None) -> dict[str, float]:
    """Times `num_steps` steps of `model.fit` on train batches (after `warmup_steps` untimed
    steps that trace the graph).

    Returns:
      {"seconds_per_step", "windows_per_s", "tokens_per_s" (real tokens), "steps"}.
    """
    manifest = load_manifest(manifest_dir)
    recipe_settings = RECIPES[recipe]
    if model is None:
        model = build_reference_model(len(manifest["label_map"]), pretrained=pretrained,
                                      recipe=recipe, total_steps=num_steps + warmup_steps)
    dataset = fit_dataset(manifest_dir, "train", batch_size, pad_to, repeat=True,
                          mask_padding=recipe_settings["mask_padding"],
                          one_hot=recipe_settings["one_hot"])
    if warmup_steps:  # traces the train function (the timed fit below reuses it)
        model.fit(dataset.take(warmup_steps), epochs=1, verbose=0)
    batches = list(dataset.take(num_steps))  # read before timing: the timed part is fit only
    tokens = sum(int(tf.reduce_sum(b[0]["attention_mask"])) for b in batches)
    windows = sum(int(b[1].shape[0]) for b in batches)
    timed = tf.data.Dataset.from_generator(
        lambda: iter(batches), output_signature=dataset.element_spec)
    started = time.perf_counter()
    model.fit(timed, steps_per_epoch=num_steps, epochs=1, verbose=0)
    elapsed = time.perf_counter() - started
    return {"seconds_per_step": elapsed / num_steps, "windows_per_s": windows / elapsed,
            "tokens_per_s": tokens / elapsed, "steps": num_steps}


# ------------------------------------------------------------------------------------------------
# Evaluation with the project's scorer
# ------------------------------------------------------------------------------------------------


class TaggerView:
    """The models/ tagger API (`__call__`, `decode`, `compute_loss`) over a `TokenClassifier` or
    `KashgariStyleTagger`, so that `trainer.evaluation.evaluate` scores it exactly like our
    taggers."""

    def __init__(self, model):
        self.model = model

    def __call__(self, inputs: dict, training: bool = False) -> tf.Tensor:
        """inputs: input_ids, attention_mask int32 [B, T] -> logits float32 [B, T, K] (for a
        model that outputs probabilities, their logarithm: the same argmax and loss)."""
        if isinstance(self.model, KashgariStyleTagger):
            probabilities = self.model(inputs, training=training)
            return tf.math.log(tf.maximum(tf.cast(probabilities, tf.float32), 1e-7))
        logits = self.model({"input_ids": inputs["input_ids"],
                             "attention_mask": inputs["attention_mask"],
                             "token_type_ids": tf.zeros_like(inputs["input_ids"])},
                            training=training)
        return tf.cast(logits, tf.float32)

    def decode(self, logits: tf.Tensor, label_mask: tf.Tensor):
        """Per-position argmax: (tag_ids int32 [B, T], 0 outside label_mask; scores [B])."""
        from models.heads import SoftmaxHead

        return SoftmaxHead(ignore_id=IGNORE_ID).decode(logits, label_mask)

    def compute_loss(self, logits: tf.Tensor, label_ids: tf.Tensor, label_mask=None):
        """Masked token cross-entropy: (sum float32 [], count float32 [])."""
        from models.heads import SoftmaxHead

        return SoftmaxHead(ignore_id=IGNORE_ID).loss(logits, label_ids, label_mask)


_VIEWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def tagger_view(model) -> TaggerView:
    """The one TaggerView of `model` (so evaluation's compiled step is traced once per model)."""
    view = _VIEWS.get(model)
    if view is None:
        view = _VIEWS[model] = TaggerView(model)
    return view


def padded_token_accuracy(model, manifest_dir: str, split: str, *, pad_to: int = 128,
                          batch_size: int = 64, max_batches: int = 0) -> dict[str, float]:
    """Token accuracy per window position, as the blog measured it and without padding.

    Returns:
      {"token_accuracy_with_padding": over all B * pad_to positions, padding, special tokens and
       continuation pieces labelled "O"; "token_accuracy_windows": over labelled positions only,
       per window (before merging windows)}.
    """
    view = tagger_view(model)
    predict = tf.function(lambda x: tf.argmax(view(x), axis=-1, output_type=tf.int32))
    outside = load_manifest(manifest_dir)["label_map"].index("O")
    dataset = make_dataset(manifest_dir, split, batch_size=batch_size, bucketing=False,
                           pad_to_length=pad_to, shuffle=False)
    correct_all = total_all = correct_labelled = total_labelled = 0
    for index, batch in enumerate(dataset):
        if max_batches and index >= max_batches:
            break
        pred = predict({"input_ids": batch["input_ids"],
                        "attention_mask": batch["attention_mask"]}).numpy()
        label_ids = batch["label_ids"].numpy()
        labelled = label_ids != IGNORE_ID
        gold = np.where(labelled, label_ids, outside)
        correct_all += int(np.sum(pred == gold))
        total_all += gold.size
        correct_labelled += int(np.sum((pred == gold) & labelled))
        total_labelled += int(np.sum(labelled))
    return {"token_accuracy_with_padding": correct_all / max(total_all, 1),
            "token_accuracy_windows": correct_labelled / max(total_labelled, 1)}


def evaluate_split(model, manifest_dir: str, split: str, *, pad_to: int = 128,
                   batch_size: int = 64, max_batches: int = 0,
                   with_padded_accuracy: bool = True,
                   predictions_file: str | os.PathLike | None = None) -> dict[str, float]:
    """Entity P/R/F1 (micro, per type), token accuracy and loss from `trainer.evaluation`
    (windows merged per character as the trainer does), plus the padded token accuracy.
    predictions_file: also write `char gold pred` lines there, as the trainer's
    predictions_<split>.txt (what benchmarks/frozen_vs_finetune.py scores with seqeval)."""
    from trainer import cache, evaluation

    manifest = load_manifest(manifest_dir)
    tokens, gold_tags = cache.read_gold(manifest, split)
    dataset = make_dataset(manifest_dir, split, batch_size=batch_size, bucketing=False,
                           pad_to_length=pad_to, shuffle=False)
    result = evaluation.evaluate(tagger_view(model), dataset, manifest["label_map"],
                                 gold_tags=gold_tags,
                                 max_batches=max_batches or None)
    metrics = dict(result.metrics)
    if predictions_file is not None:
        evaluation.write_predictions(predictions_file, result.predictions, tokens)
    if with_padded_accuracy:
        metrics.update(padded_token_accuracy(model, manifest_dir, split, pad_to=pad_to,
                                             batch_size=batch_size, max_batches=max_batches))
    logging.info("%s: f1 %.4f\n%s", split, metrics["f1"],
                 evaluation.format_report(metrics, result.entity_counts))
    return metrics


class DevF1Callback(tf.keras.callbacks.Callback):
    """After every epoch: dev entity F1 (project scorer) to TensorBoard and the history."""

    def __init__(self, manifest_dir: str, run_dir: str, *, pad_to: int, max_batches: int,
                 steps_per_epoch: int):
        super().__init__()
        self.manifest_dir, self.pad_to, self.max_batches = manifest_dir, pad_to, max_batches
        self.steps_per_epoch = steps_per_epoch
        self.writer = tf.summary.create_file_writer(run_dir)
        self.dev_history: list[dict[str, float]] = []

    def on_epoch_end(self, epoch, logs=None):
        metrics = evaluate_split(self.model, self.manifest_dir, "dev", pad_to=self.pad_to,
                                 max_batches=self.max_batches, with_padded_accuracy=False)
        step = (epoch + 1) * self.steps_per_epoch
        with self.writer.as_default(step=step):
            for name in ("f1", "precision", "recall", "token_accuracy", "loss"):
                tf.summary.scalar(f"dev/{name}", metrics[name])
            for name, value in (logs or {}).items():
                tf.summary.scalar(f"train/{name}", value)
        self.writer.flush()
        self.dev_history.append({"epoch": epoch + 1, "step": step, **metrics})


class FitClock(tf.keras.callbacks.Callback):
    """Seconds of `fit` summed over every process that worked on one run directory.

    Written to `path` every `save_every` steps (right after BackupAndRestore's backup, which runs
    before it in the callback list) and at the end; a resumed run starts from the recorded sum.
    """

    def __init__(self, path: pathlib.Path, save_every: int):
        super().__init__()
        self.path, self.save_every = path, save_every
        self.before = float(json.loads(path.read_text())["seconds"]) if path.is_file() else 0.0
        self.started = time.time()
        self.batches = 0

    def seconds(self) -> float:
        return self.before + time.time() - self.started

    def save(self) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps({"seconds": self.seconds()}))
        os.replace(partial, self.path)

    def on_train_begin(self, logs=None):
        self.started = time.time()

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.save_every and self.batches % self.save_every == 0:
            self.save()

    def on_train_end(self, logs=None):
        self.save()


def fit_resumable(model, train: tf.data.Dataset, *, epochs: int, run_dir: pathlib.Path,
                  backup_every_steps: int, callbacks: Sequence[tf.keras.callbacks.Callback] = (),
                  verbose: int = 2) -> tuple[tf.keras.callbacks.History, FitClock]:
    """`model.fit` that resumes where a killed process left it (RUN_DIR/backup), if it did.

    The backup is kept when fit returns (a kill during the evaluation that follows must not
    restart training); `finish_resumable` deletes it once the results are written.

    Returns:
      fit's History (the epochs of this process only) and the clock of every process's fit time.
    """
    backup_dir = run_dir / "backup"
    if backup_every_steps and int(tf.data.experimental.cardinality(train)) < 0:
        # BackupAndRestore finds its place in the epoch from the epoch's length.
        raise ValueError("fit_resumable needs a dataset of known length (e.g. "
                         "dataset.apply(tf.data.experimental.assert_cardinality(steps)))")
    if backup_every_steps and backup_dir.is_dir():
        logging.info("resuming fit from the backup in %s", backup_dir)
    if not model.built:  # BackupAndRestore restores into built weights and optimizer slots
        model(next(iter(train))[0])
    clock = FitClock(run_dir / "fit_clock.json", backup_every_steps)
    extra: list[tf.keras.callbacks.Callback] = []
    if backup_every_steps:
        extra.append(tf.keras.callbacks.BackupAndRestore(
            str(backup_dir), save_freq=backup_every_steps, delete_checkpoint=False))
    history = model.fit(train, epochs=epochs, callbacks=[*extra, clock, *callbacks],
                        verbose=verbose)
    return history, clock


def finish_resumable(run_dir: pathlib.Path) -> None:
    """Deletes the backup and the clock of a finished run (call after results.json exists)."""
    import shutil

    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    (run_dir / "fit_clock.json").unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------
# The whole run
# ------------------------------------------------------------------------------------------------


def run_reference(*, run_dir: str, recipe: str = "reference", manifest_dir: str | None = None,
                  pretrained: str = DEFAULT_PRETRAINED, train_sentences: int = 0, epochs: int = 3,
                  batch_size: int = 32, pad_to: int = 128, learning_rate: float | None = None,
                  lr_schedule: str | None = None, warmup_proportion: float = 0.0,
                  from_logits: bool | None = None, mask_padding: bool | None = None,
                  seed: int = 0, eval_max_batches: int = 0, train_file: str = "",
                  backup_every_steps: int = 200,
                  flag_values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trains with `fit` and writes run_dir/results.json (see the module docstring).

    Returns:
      The results dict.
    """
    started = time.time()
    tf.keras.utils.set_random_seed(seed)
    run_path = pathlib.Path(run_dir)
    run_path.mkdir(parents=True, exist_ok=True)
    if manifest_dir is None:
        manifest_dir = prepare_manifest(
            pretrained=pretrained, max_seq_length=pad_to,
            extra_flags=[f"--train_file={train_file}"] if train_file else ())
    manifest = load_manifest(manifest_dir)
    label_map = list(manifest["label_map"])
    settings = dict(RECIPES[recipe])
    for name, value in (("learning_rate", learning_rate), ("lr_schedule", lr_schedule),
                        ("from_logits", from_logits), ("mask_padding", mask_padding)):
        if value is not None:
            settings[name] = value
    sentence_ids = choose_sentences(manifest_dir, "train", train_sentences, seed=seed)
    num_windows = count_windows(manifest_dir, "train", sentence_ids)
    steps_per_epoch = math.ceil(num_windows / batch_size)
    total_steps = steps_per_epoch * epochs
    warmup_steps = int(round(warmup_proportion * total_steps))
    model = build_reference_model(
        len(label_map), pretrained=pretrained, recipe=recipe,
        learning_rate=settings["learning_rate"], lr_schedule=settings["lr_schedule"],
        from_logits=settings["from_logits"], one_hot=settings["one_hot"],
        total_steps=total_steps, warmup_steps=warmup_steps)
    train = fit_dataset(manifest_dir, "train", batch_size, pad_to, sentence_ids=sentence_ids,
                        seed=seed, mask_padding=settings["mask_padding"],
                        one_hot=settings["one_hot"]).apply(
                            tf.data.experimental.assert_cardinality(steps_per_epoch))
    callback = DevF1Callback(manifest_dir, str(run_path), pad_to=pad_to,
                             max_batches=eval_max_batches, steps_per_epoch=steps_per_epoch)
    logging.info("recipe %s %s: %d train windows (%s sentences), %d steps per epoch, %d epochs",
                 recipe, settings, num_windows, train_sentences or "all", steps_per_epoch, epochs)
    history, clock = fit_resumable(model, train, epochs=epochs, run_dir=run_path,
                                   backup_every_steps=backup_every_steps, callbacks=[callback])
    fit_seconds = clock.seconds()
    results: dict[str, Any] = {
        "recipe": recipe, "settings": settings, "flags": flag_values or {},
        "pretrained": pretrained, "manifest_dir": manifest_dir,
        "train_sentences": len(sentence_ids) if sentence_ids is not None else int(
            manifest["splits"]["train"]["counts"]["sentences"]),
        "train_windows": num_windows, "epochs": epochs, "batch_size": batch_size,
        "pad_to": pad_to, "steps": total_steps, "warmup_steps": warmup_steps,
        "fit_history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "dev_history": callback.dev_history, "fit_seconds": fit_seconds,
        "eval_max_batches": eval_max_batches,
    }
    for split in ("dev", "test"):
        results[split] = evaluate_split(model, manifest_dir, split, pad_to=pad_to,
                                        max_batches=eval_max_batches,
                                        predictions_file=run_path / f"predictions_{split}.txt")
    results["wall_seconds"] = time.time() - started + clock.before
    results["resumed"] = clock.before > 0
    (run_path / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    finish_resumable(run_path)
    logging.info("dev f1 %.4f, test f1 %.4f (%.0f s); results in %s", results["dev"]["f1"],
                 results["test"]["f1"], results["wall_seconds"], run_path / "results.json")
    return results


def define_flags() -> None:
    flags.DEFINE_enum("recipe", "reference", list(RECIPES), "reference: sparse CE from logits, "
                      "Adam 5e-5 linear decay, padding masked. blog: the failing recipe. "
                      "kashgari: frozen encoder, last 4 layers, BiLSTM 128, softmax.")
    flags.DEFINE_string("pretrained", DEFAULT_PRETRAINED, "BERT checkpoint directory.")
    flags.DEFINE_string("manifest", "", "A preprocessed directory to use (default: preprocess "
                        "the trainer's People's Daily files with --pretrained's tokenizer and "
                        "windows of --pad_to pieces, or reuse the cache).")
    flags.DEFINE_integer("train_sentences", 0, "Random subset of train sentences (0 = all).")
    flags.DEFINE_string("train_file", "", "Train corpus file (default: the trainer's People's "
                        "Daily proxy train); ignored with --manifest.")
    flags.DEFINE_integer("backup_every_steps", 200, "Back up the fit state every this many steps "
                         "so that the same command resumes a killed run (0 = never).")
    flags.DEFINE_integer("epochs", 3, "Epochs of fit.")
    flags.DEFINE_integer("batch_size", 32, "Windows per batch.")
    flags.DEFINE_integer("pad_to", 128, "Fixed padded length (also max_seq_length when "
                         "preprocessing here).")
    flags.DEFINE_float("learning_rate", None, "Adam peak learning rate (default: the recipe's).")
    flags.DEFINE_enum("lr_schedule", None, ["linear", "constant"], "Decay (default: recipe's).")
    flags.DEFINE_float("warmup_proportion", 0.0, "Linear warmup, fraction of all steps.")
    flags.DEFINE_boolean("from_logits", None, "The loss's from_logits (default: the recipe's).")
    flags.DEFINE_boolean("mask_padding", None, "Sample weight 0 on padding, special tokens and "
                         "continuation pieces (default: the recipe's).")
    flags.DEFINE_integer("seed", 0, "Seed of the subset, shuffling and initialisation.")
    flags.DEFINE_integer("eval_max_batches", 0, "Score only this many dev/test batches (smoke "
                         "tests; 0 = all).")
    flags.DEFINE_string("run_dir", "runs/hf_reference", "Where results.json and events go.")
    flags.DEFINE_integer("time_fit_steps", 0, "Only time this many fit steps of --recipe on "
                         "train batches (after 2 untimed ones), print the figures and exit.")


def main(argv):
    del argv
    values = flags.FLAGS.flag_values_dict()
    if values["time_fit_steps"]:
        manifest_dir = values["manifest"] or prepare_manifest(pretrained=values["pretrained"],
                                                              max_seq_length=values["pad_to"])
        print(json.dumps(time_fit_steps(
            manifest_dir, num_steps=values["time_fit_steps"], batch_size=values["batch_size"],
            pad_to=values["pad_to"], recipe=values["recipe"], pretrained=values["pretrained"])))
        return
    run_reference(
        run_dir=values["run_dir"], recipe=values["recipe"],
        manifest_dir=values["manifest"] or None, pretrained=values["pretrained"],
        train_sentences=values["train_sentences"], epochs=values["epochs"],
        batch_size=values["batch_size"], pad_to=values["pad_to"],
        learning_rate=values["learning_rate"], lr_schedule=values["lr_schedule"],
        warmup_proportion=values["warmup_proportion"], from_logits=values["from_logits"],
        mask_padding=values["mask_padding"], seed=values["seed"],
        eval_max_batches=values["eval_max_batches"], train_file=values["train_file"],
        backup_every_steps=values["backup_every_steps"],
        flag_values={name: values[name] for name in (
            "recipe", "pretrained", "manifest", "train_sentences", "epochs", "batch_size",
            "pad_to", "learning_rate", "lr_schedule", "warmup_proportion", "from_logits",
            "mask_padding", "seed", "eval_max_batches", "run_dir", "train_file",
            "backup_every_steps")})


if __name__ == "__main__":
    define_flags()
    app.run(main)
