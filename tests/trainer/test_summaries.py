"""Tests for trainer.summaries (the writer): every tag read back from the event files, with its
values."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import trainer  # noqa: F401  (models/__init__.py chooses Keras 2 before tf.keras is used)
from trainer import evaluation, summaries
from trainer.event_layout import flat_name
from trainer.heatmap import render_heatmap
from trainer.run_events import RunEvents
from trainer.summary_markdown import examples_markdown

LABEL_MAP = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
GROUPS = ("embeddings", "encoder_layer_0", "bilstm", "head", "crf")
TRAIN_STEPS = (10, 20, 30)
EVAL_STEPS = (20, 30)

SENTENCES = [list("今天天气很好"), list("中国人民银行在北京"), list("小明去上海")]
PREDICTIONS = [
    evaluation.SentencePrediction(0, ["O"] * 6, ["O"] * 6, np.ones(6, bool)),
    evaluation.SentencePrediction(
        1, ["B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "B-LOC", "I-LOC"],
        ["B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "B-LOC", "I-LOC"],
        np.ones(9, bool)),
    evaluation.SentencePrediction(
        2, ["B-PER", "I-PER", "O", "B-ORG", "I-ORG"], ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"],
        np.ones(5, bool)),
]
CONFIG = {"model": {"encoder": "bert", "bilstm_units": 128, "pretrained": None,
                    "hidden_layers": "concat"},
          "optimizer": {"head_lr": 1e-3, "schedule": ["warmup", "linear"]},
          "mixed_precision": "fp16", "freeze_encoder": True, "seed": 7}


def train_values(step):
    return dict(loss=1.0 / step,
                lr_by_group={g: 1e-4 * (i + 1) * step for i, g in enumerate(GROUPS)},
                grad_norm_by_group={g: 0.5 + i + step / 100 for i, g in enumerate(GROUPS)},
                loss_scale=2.0 ** 15, tokens_per_s=1000.0 + step, windows_per_s=50.0 + step)


def eval_metrics(step, split):
    metrics = {"f1": 0.5 + step / 100, "precision": 0.4 + step / 100, "recall": 0.6,
               "token_accuracy": 0.9, "loss": 2.0 / step}
    for i, entity_type in enumerate(("LOC", "ORG", "PER")):
        for name in ("f1", "precision", "recall"):
            metrics[f"{name}/{entity_type}"] = 0.1 * i + step / 1000
    return metrics


def transitions(step):
    matrix = np.linspace(-2, 3, 49).reshape(7, 7).astype(np.float32) * step / 30
    matrix[0, 2] = -1e4  # O -> I-LOC: forbidden
    return matrix


def write_example_run(run_dir):
    """Writes what a short training run writes; returns {tag: {step: value}} of the scalars."""
    expected = {}
    with summaries.SummaryWriter(run_dir) as writer:
        writer.hparams(CONFIG)
        for step in TRAIN_STEPS:
            values = train_values(step)
            # Positional, as trainer-core calls it.
            writer.train_step(step, values["loss"], values["lr_by_group"],
                              values["grad_norm_by_group"], values["loss_scale"],
                              values["tokens_per_s"], values["windows_per_s"])
            expected.setdefault("train/loss", {})[step] = values["loss"]
            expected.setdefault("train/loss_scale", {})[step] = values["loss_scale"]
            expected.setdefault("train/tokens_per_s", {})[step] = values["tokens_per_s"]
            expected.setdefault("train/windows_per_s", {})[step] = values["windows_per_s"]
            for group in GROUPS:
                expected.setdefault(f"train/lr/{group}", {})[step] = values["lr_by_group"][group]
                expected.setdefault(f"train/grad_norm/{group}", {})[step] = (
                    values["grad_norm_by_group"][group])
        for step in EVAL_STEPS:
            for key, value in eval_metrics(step, "dev").items():
                expected.setdefault(f"dev/{key}", {})[step] = value
            writer.eval(step, "dev", {k: tf.constant(v) if k == "loss" else v
                                      for k, v in eval_metrics(step, "dev").items()})
            writer.text_examples(step, PREDICTIONS, SENTENCES, split="dev")
            writer.transitions_image(step, tf.Variable(transitions(step)), LABEL_MAP)
        for key, value in eval_metrics(30, "test").items():
            expected.setdefault(f"test/{key}", {})[30] = value
        writer.eval(30, "test", eval_metrics(30, "test"))
    return expected


def load_events(run_dir):
    """Every event file of the run (RUN_DIR and its split directories), by flat name."""
    return RunEvents(run_dir)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    expected = write_example_run(run_dir)
    return run_dir, expected, load_events(run_dir)


# Every scalar the issue lists, for a CRF model with the groups above.
REQUIRED_SCALARS = (
    ["train/loss", "train/loss_scale", "train/tokens_per_s", "train/windows_per_s"]
    + [f"train/lr/{g}" for g in GROUPS] + [f"train/grad_norm/{g}" for g in GROUPS]
    + [f"{split}/{name}" for split in ("dev", "test")
       for name in ("f1", "precision", "recall", "token_accuracy", "loss",
                    "f1/LOC", "f1/ORG", "f1/PER", "precision/PER", "recall/PER",
                    "precision/LOC", "recall/ORG")])


def test_every_scalar_with_its_values(run):
    run_dir, expected, accumulator = run
    tags = set(accumulator.Tags()["tensors"])
    assert set(REQUIRED_SCALARS) <= tags
    assert set(expected) <= tags
    for tag, by_step in expected.items():
        events = accumulator.Tensors(tag)
        assert [e.step for e in events] == sorted(by_step), tag
        for event in events:
            value = tf.make_ndarray(event.tensor_proto)
            assert value.shape == () and value.dtype == np.float32, tag
            assert value == pytest.approx(by_step[event.step], rel=1e-6), (tag, event.step)
    assert accumulator.Tensors("train/lr/head")[-1].step == 30
    assert tf.make_ndarray(accumulator.Tensors("train/lr/head")[-1].tensor_proto) == (
        pytest.approx(4e-4 * 30))


def test_one_directory_per_split_with_the_same_tags(run):
    run_dir, _, _ = run
    # The Model Garden layout: TensorBoard lists RUN_DIR, RUN_DIR/train, RUN_DIR/dev, ...
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["dev", "test", "train"]
    for directory in (run_dir, run_dir / "train", run_dir / "dev", run_dir / "test"):
        assert len(list(directory.glob("events.out.tfevents.*"))) == 1, directory
    by_directory = {}
    for split in ("train", "dev", "test"):
        accumulator = EventAccumulator(str(run_dir / split), size_guidance={"tensors": 0})
        accumulator.Reload()
        by_directory[split] = set(accumulator.Tags()["tensors"])
    # The same tag in each split's directory: one chart overlays train, dev and test.
    assert {"loss"} <= by_directory["train"] & by_directory["dev"] & by_directory["test"]
    assert {"f1", "f1/PER", "examples"} <= by_directory["dev"]
    assert {"lr/head", "grad_norm/crf", "tokens_per_s"} <= by_directory["train"]
    root = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    root.Reload()
    assert set(root.Tags()["tensors"]) == {"crf/transitions", "_hparams_/experiment",
                                           "_hparams_/session_start_info"}


def test_frozen_learning_rates_and_text(tmp_path):
    with summaries.SummaryWriter(tmp_path) as writer:
        writer.frozen_learning_rates(0, ["embeddings", "encoder_layer_0"])
        writer.text(0, "variables", "| group | state |")
    events = load_events(tmp_path)
    assert sorted(events.Tags()["tensors"]) == [
        "train/lr/embeddings", "train/lr/encoder_layer_0", "variables"]
    [event] = events.Tensors("train/lr/embeddings")
    assert event.step == 0 and tf.make_ndarray(event.tensor_proto) == 0.0
    [text] = events.Tensors("variables")
    assert tf.make_ndarray(text.tensor_proto).item().decode() == "| group | state |"
    assert events.SummaryMetadata("variables").plugin_data.plugin_name == "text"


def test_text_examples(run):
    _, _, accumulator = run
    events = accumulator.Tensors("dev/examples")
    assert [e.step for e in events] == list(EVAL_STEPS)
    markdown = tf.make_ndarray(events[-1].tensor_proto).item().decode("utf-8")
    assert markdown == examples_markdown(PREDICTIONS, SENTENCES)
    assert markdown.splitlines() == [
        "| id | sentence | gold entities | predicted entities |",
        "|---:|---|---|---|",
        "| 1 | 中国人民银行在北京 | 中国人民银行 (ORG), 北京 (LOC) | 中国人民银行 (ORG), 北京 (LOC) |",
        "| 2 | 小明去上海 | 小明 (PER), 上海 (LOC) | 小明 (PER), ~~上海 (ORG)~~ |",
    ]
    plugin = accumulator.SummaryMetadata("dev/examples").plugin_data.plugin_name
    assert plugin == "text"


def test_text_examples_from_triples(tmp_path):
    triples = [(SENTENCES[p.sentence_id], p.gold, p.pred) for p in PREDICTIONS]
    with summaries.SummaryWriter(tmp_path) as writer:
        markdown = writer.text_examples(5, triples, max_examples=2)
    # The caller chose the sentences: shown as given, even without entities.
    assert markdown.splitlines()[2:] == [
        "| 0 | 今天天气很好 | (none) | (none) |",
        "| 1 | 中国人民银行在北京 | 中国人民银行 (ORG), 北京 (LOC) | 中国人民银行 (ORG), 北京 (LOC) |"]
    [event] = load_events(tmp_path).Tensors("dev/examples")
    assert tf.make_ndarray(event.tensor_proto).item().decode("utf-8") == markdown


def test_transitions_image(run):
    _, _, accumulator = run
    events = accumulator.Tensors("crf/transitions")
    assert [e.step for e in events] == list(EVAL_STEPS)
    width, height, png = tf.make_ndarray(events[-1].tensor_proto)
    image = tf.io.decode_png(png).numpy()
    assert image.shape == (int(height), int(width), 3)
    assert np.array_equal(image, render_heatmap(transitions(30), labels=LABEL_MAP))
    description = accumulator.SummaryMetadata("crf/transitions").summary_description
    assert "2=I-LOC" in description and "row = from tag" in description


def test_hparams(run):
    run_dir, _, accumulator = run
    content = accumulator.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    hparams = {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
               for name, value in start.hparams.items()}
    assert hparams == {
        "model.encoder": "bert", "model.bilstm_units": 128.0, "model.pretrained": "None",
        "model.hidden_layers": "concat", "optimizer.head_lr": 1e-3,
        "optimizer.schedule": '["warmup", "linear"]', "mixed_precision": "fp16",
        "freeze_encoder": True, "seed": 7.0}
    assert start.group_name == os.path.basename(run_dir)  # the trial id
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]).experiment
    assert [flat_name(m.name.group, m.name.tag) for m in experiment.metric_infos] == (
        list(summaries.DEFAULT_HPARAM_METRICS))
    # The metrics' groups are the split directories, relative to the session (RUN_DIR).
    assert [(m.name.group, m.name.tag) for m in experiment.metric_infos][:2] == [
        ("dev", "f1"), ("dev", "precision")]
    assert {h.name for h in experiment.hparam_infos} == set(hparams)


def test_flatten_config():
    assert summaries.flatten_config(
        {"a": {"b": 1, "c": {"d": True}}, "e": None, "f": (1, "x"), "g": np.float32(0.5),
         "h": np.int64(3), "i": "s", "j": pytest}) == {
        "a.b": 1.0, "a.c.d": True, "e": "None", "f": '[1, "x"]', "g": 0.5, "h": 3.0, "i": "s",
        "j": str(pytest)}
    assert type(summaries.flatten_config({"x": True})["x"]) is bool


def test_optional_scalars_are_skipped(tmp_path):
    with summaries.SummaryWriter(tmp_path) as writer:
        writer.train_step(1, 0.5, {"head": 1e-3}, None, None, None, None)
        writer.train_step(2, np.float32(0.25), lr_by_group={"head": tf.constant(2e-3)})
    accumulator = load_events(tmp_path)
    assert sorted(accumulator.Tags()["tensors"]) == ["train/loss", "train/lr/head"]
    assert [tf.make_ndarray(e.tensor_proto).item() for e in accumulator.Tensors("train/loss")] == [
        0.5, 0.25]
