"""Checkpoints written before #22 (transformers' TF encoder) restore into today's model and
optimizer by a name map: the committed tiny checkpoints (tests/fixtures/legacy_checkpoint, made by
the old code) give the old code's logits, and one more update gives the old code's next logits."""

import shutil

import numpy as np
import pytest

import models  # noqa: F401  (chooses Keras 2 for tf.keras: models/__init__.py)
import tensorflow as tf  # noqa: E402

from tests.fixtures import legacy_checkpoint as fixture  # noqa: E402
from trainer import checkpointing, legacy_checkpoint  # noqa: E402


def checkpoint_path(name):
    return str(fixture.FIXTURE_DIR / name / fixture.CHECKPOINT)


def reference(name):
    return dict(np.load(fixture.FIXTURE_DIR / name / "reference.npz"))


def update_once(name, model, plan, step, input_position):
    """One more `fixture.train_step` update, run eagerly: tracing the trainer's step would take
    most of this file's time, and eager and traced updates agree to float32 rounding."""
    tf.config.run_functions_eagerly(True)
    try:
        fixture.train_step(name, model, plan, step, input_position, 1)
    finally:
        tf.config.run_functions_eagerly(False)


@pytest.mark.parametrize("name", fixture.ARCHITECTURES)
def test_model_and_optimizer_continue_where_the_old_code_stopped(name):
    model, plan, step, input_position = fixture.build(name)
    objects = dict(model=model, optimizer=plan.optimizer, step=step,
                   input_position=input_position)
    assert legacy_checkpoint.is_legacy(checkpoint_path(name))
    legacy_checkpoint.restore(checkpoint_path(name), objects)
    arrays = reference(name)
    # To float32 rounding, not bit for bit: the exact GELU is computed with erf, transformers'
    # with erfc (models/transformer/block.py), a few 1e-9 apart on these logits.
    np.testing.assert_allclose(fixture.logits(name, model), arrays["logits_before"], rtol=0,
                               atol=1e-7)
    assert int(step.numpy()) == int(plan.optimizer.iterations.numpy()) == fixture.STEPS_BEFORE
    update_once(name, model, plan, step, input_position)
    # The update needs every Adam slot where the old code had it (the fused QKV's three).
    np.testing.assert_allclose(fixture.logits(name, model), arrays["logits_after"], rtol=0,
                               atol=1e-6)


def test_the_update_depends_on_the_restored_slots():
    """The model alone restored (fresh, zero slots): the next update goes elsewhere, by far
    more than the tolerance above, so that test sees a wrongly mapped slot."""
    model, plan, step, input_position = fixture.build("bert")
    legacy_checkpoint.restore(checkpoint_path("bert"), {"model": model})
    arrays = reference("bert")
    np.testing.assert_allclose(fixture.logits("bert", model), arrays["logits_before"], rtol=0,
                               atol=1e-7)
    update_once("bert", model, plan, step, input_position)
    assert np.abs(fixture.logits("bert", model) - arrays["logits_after"]).max() > 1e-3


def test_keys_are_those_tensorflow_writes(tmp_path):
    model, plan, step, input_position = fixture.build("electra")
    objects = dict(model=model, optimizer=plan.optimizer, step=step,
                   input_position=input_position)
    tf.train.Checkpoint(**objects).write(str(tmp_path / "today"))
    written = {key for key, _ in tf.train.list_variables(str(tmp_path / "today"))}
    found = legacy_checkpoint.checkpoint_keys(objects)
    keys = {key for _, key in found.values()}
    assert keys == written - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    # Every weight is saved under the model (not reached first through the optimizer).
    assert all(found[id(v)][1].startswith("model/") for v in model.variables)
    assert not legacy_checkpoint.is_legacy(str(tmp_path / "today"))
    assert legacy_checkpoint.legacy_path("encoder/layer_._3/output/LayerNorm/gamma:0") == (
        "encoder/layer/3/bert_output/LayerNorm/gamma")


def test_the_trainer_resumes_an_old_run_and_keeps_its_best(tmp_path):
    """Checkpointer.restore_latest and restore_best read old checkpoints by the name map."""
    model, plan, step, input_position = fixture.build("roberta")
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    for source in (fixture.FIXTURE_DIR / "roberta").glob(f"{fixture.CHECKPOINT}.*"):
        shutil.copy(source, directory / source.name)
    (directory / "checkpoint").write_text(
        f'model_checkpoint_path: "{fixture.CHECKPOINT}"\n'
        f'all_model_checkpoint_paths: "{fixture.CHECKPOINT}"\n')
    lr_scale = tf.Variable(0.5)
    messages = []
    checkpointer = checkpointing.Checkpointer(
        tmp_path, model=model, optimizer=plan.optimizer, step=step,
        input_position=input_position, keep=2, extra={"lr_scale": lr_scale},
        log=messages.append)
    assert checkpointer.restore_latest() == fixture.STEPS_BEFORE
    assert "written before #22" in messages[-1]
    assert float(lr_scale.numpy()) == 0.5  # not in the old checkpoint: kept
    arrays = reference("roberta")
    np.testing.assert_allclose(fixture.logits("roberta", model), arrays["logits_before"],
                               rtol=0, atol=1e-7)

    best = tmp_path / "best"
    best.mkdir()
    for source in (fixture.FIXTURE_DIR / "roberta").glob(f"{fixture.CHECKPOINT}.*"):
        shutil.copy(source, best / source.name.replace(fixture.CHECKPOINT, "model"))
    (best / "best.json").write_text('{"step": 2, "f1": 0.5}')
    update_once("roberta", model, plan, step, input_position)
    assert checkpointer.restore_best() == 2
    np.testing.assert_allclose(fixture.logits("roberta", model), arrays["logits_before"],
                               rtol=0, atol=1e-7)
    checkpointer.close()


def test_a_checkpoint_of_another_model_is_a_one_line_error():
    model, _, _, _ = fixture.build("electra")
    with pytest.raises(legacy_checkpoint.LegacyCheckpointError,
                       match=r"bert/ckpt-2 \(written before #22, by transformers' TF encoder\) "
                             r"lacks 31 variable\(s\) of this model, e\.g\. model/encoder/"
                             r"transformer/electra/embeddings/weight/.*: it is of another model$"):
        legacy_checkpoint.restore(checkpoint_path("bert"), {"model": model})
