"""The schedule plan on its own (no TensorFlow, no training): trainer/schedule_plan.py."""

import pytest

from tests import trainer_testing as tt
from trainer import config as config_lib
from trainer.schedule_plan import plan_schedule


def config(*flags):
    """The shipped frozen flagfile's config with `flags` after it (no file is read)."""
    return config_lib.parse_flags(["--flagfile=" + str(tt.REPO / "configs/frozen.flags"),
                                   *flags])


def test_epochs_alone_as_before():
    plan = plan_schedule(config("--epochs=3", "--eval_every_epochs=1", "--min_train_steps=0",
                                "--max_evaluations=0", "--min_updates_per_epoch=0"),
                         train_windows=1000)
    assert (plan.steps_per_epoch, plan.total_steps, plan.stop_at) == (32, 94, 94)
    assert (plan.eval_every, plan.floor_applied, plan.eval_widened) == (32, False, False)


def test_the_floor_gives_a_small_corpus_more_epochs_and_widens_the_dev_cadence():
    plan = plan_schedule(config("--epochs=10", "--min_train_steps=2000", "--max_evaluations=20",
                                "--early_stopping_patience=3", "--min_updates_per_epoch=0"),
                         train_windows=1362, train_sentences=1350)
    assert plan.steps_per_epoch == 43 and plan.total_steps == 2000 and plan.floor_applied
    assert plan.eval_every == 100 and plan.eval_widened  # 2000 / 20, not one epoch (43)
    assert plan.epochs == pytest.approx(2000 / 43)
    line = plan.describe()
    assert line.startswith("schedule: corpus of 1,350 sentences (1,362 windows): 43 updates an "
                           "epoch of 32; 2,000 updates (at least --min_train_steps) = up to 46.5 "
                           "epochs; dev every 100 updates (2.33 epochs, widened by "
                           "--max_evaluations); stop after 3 evaluations"), line


def test_a_large_corpus_keeps_its_schedule_in_epochs():
    """The full People's Daily proxy train (46,000 windows): 10 epochs are far above the floor,
    and an evaluation a epoch is within the cap: the plan is what epochs alone give."""
    with_rule = plan_schedule(config("--epochs=10", "--min_train_steps=2000",
                                     "--max_evaluations=20"), train_windows=46000)
    without = plan_schedule(config("--epochs=10", "--min_train_steps=0", "--max_evaluations=0"),
                            train_windows=46000)
    assert with_rule.total_steps == without.total_steps == 14375
    assert with_rule.eval_every == without.eval_every == 1438
    assert not (with_rule.floor_applied or with_rule.eval_widened)


def test_a_small_corpus_gets_smaller_batches_down_to_the_minimum():
    rule = ("--min_updates_per_epoch=100", "--min_batch_size=16", "--batch_size=32",
            "--min_train_steps=8000", "--max_evaluations=20")
    # 1,004 windows: 32 updates an epoch of 32, 63 of 16; 8 would give 126, but 16 is the floor.
    plan = plan_schedule(config(*rule), train_windows=1004, train_sentences=1000)
    assert (plan.batch_size, plan.batch_reduced_from, plan.windows_per_update) == (16, 32, 16)
    assert plan.steps_per_epoch == 63 and plan.total_steps == 8000  # the floor is in updates
    assert plan.describe().startswith(
        "schedule: corpus of 1,000 sentences (1,004 windows): 63 updates an epoch of 16 (batch "
        "16, not 32: --min_updates_per_epoch); 8,000 updates (at least --min_train_steps)")
    # A lower minimum lets it halve again; an epoch of enough updates keeps the batch.
    assert plan_schedule(config(*rule, "--min_batch_size=4"), train_windows=1004).batch_size == 8
    kept = plan_schedule(config(*rule), train_windows=3200)  # 100 updates an epoch of 32
    assert (kept.batch_size, kept.batch_reduced_from) == (32, 0)
    assert "not 32" not in kept.describe()
    # Off, and with gradient accumulation (updates count batch x accumulation windows).
    assert plan_schedule(config(*rule, "--min_updates_per_epoch=0"),
                         train_windows=1004).batch_size == 32
    accumulated = plan_schedule(config(*rule, "--grad_accum_steps=2"), train_windows=4000)
    assert (accumulated.batch_size, accumulated.windows_per_update) == (16, 32)  # 63 -> 125


def test_a_halved_batch_still_divides_over_the_replicas():
    rule = ("--min_updates_per_epoch=100", "--min_batch_size=1", "--batch_size=48")
    assert plan_schedule(config(*rule), train_windows=500).batch_size == 3  # 48 -> 24 -> ... 3
    assert plan_schedule(config(*rule), train_windows=500, replicas=4).batch_size == 12
    assert plan_schedule(config(*rule), train_windows=500, replicas=16).batch_size == 48


@pytest.mark.parametrize("flagfile, largest_halved, smallest_kept", [
    ("frozen_crf.flags", 6368, 6369), ("bilstm_crf.flags", 3168, 3169),
    ("finetune_crf.flags", 0, 1)])
def test_where_the_shipped_flagfiles_stop_halving_the_batch(flagfile, largest_halved,
                                                            smallest_kept):
    """Below 200 updates an epoch of 32 for the frozen flagfiles, 100 for bilstm_crf (measured at
    1,000 / 2,000 / 4,000 sentences: docs/learning_curve.md), never for fine-tuning; 8,000
    sentences (8,0xx windows) and CLUENER (9,674) keep 32."""
    shipped = config_lib.parse_flags([f"--flagfile={tt.REPO / 'configs' / flagfile}"])
    if largest_halved:
        assert plan_schedule(shipped, train_windows=largest_halved).batch_size == 16
    for windows in (smallest_kept, 8040, 9674):
        assert plan_schedule(shipped, train_windows=windows).batch_size == 32, windows


def test_train_steps_and_max_steps_win():
    plan = plan_schedule(config("--train_steps=50", "--min_train_steps=2000", "--max_steps=20",
                                "--eval_every=10", "--eval_every_epochs=0",
                                "--max_evaluations=2"), train_windows=100)
    assert (plan.total_steps, plan.stop_at, plan.floor_applied) == (50, 20, False)
    assert plan.eval_every == 25 and plan.eval_widened  # ceil(50 / 2)
    assert "this invocation stops at step 20" in plan.describe()


def test_grad_accumulation_counts_windows_per_update():
    plan = plan_schedule(config("--epochs=1", "--batch_size=8", "--grad_accum_steps=4",
                                "--min_train_steps=0"), train_windows=100)
    assert (plan.windows_per_update, plan.steps_per_epoch, plan.total_steps) == (32, 4, 4)


@pytest.mark.parametrize("flagfile, windows, total, every", [
    # Windows of the full People's Daily proxy train (45,220-45,222 with the e5 tokenizer,
    # 45,209-45,216 with bert-base-chinese's) and the total steps of the archived full runs
    # (docs/runs/*/results.json): the floor and the evaluation cap change nothing there.
    ("frozen_crf.flags", 45221, 14132, 1414),
    ("finetune_crf.flags", 45221, 7066, 1414),
    ("bilstm_crf.flags", 45212, 5652, 1413),
])
def test_the_shipped_flagfiles_keep_the_full_corpus_schedule(flagfile, windows, total, every):
    shipped = config_lib.parse_flags([f"--flagfile={tt.REPO / 'configs' / flagfile}"])
    plan = plan_schedule(shipped, train_windows=windows)
    assert (plan.total_steps, plan.eval_every) == (total, every)
    assert not (plan.floor_applied or plan.eval_widened or plan.batch_reduced_from)
    assert plan.batch_size == shipped.batch_size == 32


@pytest.mark.parametrize("flagfile, batch, total, every", [
    ("frozen_crf.flags", 16, 8000, 400), ("bilstm_crf.flags", 16, 4000, 200),
    ("finetune_crf.flags", 32, 2000, 200)])
def test_the_shipped_flagfiles_give_a_small_corpus_its_floor(flagfile, batch, total, every):
    """1,000 sentences (1,004 windows, 32 updates an epoch): the floor, and dev every few
    epochs instead of every one (at most 20 evaluations; 10 for fine-tuning, whose dev F1 moves
    in small steps: patience 2 then spans a fifth of its budget); the cheap configs halve their
    batch (63 updates an epoch), fine-tuning keeps 32."""
    shipped = config_lib.parse_flags([f"--flagfile={tt.REPO / 'configs' / flagfile}"])
    plan = plan_schedule(shipped, train_windows=1004, train_sentences=1000)
    assert (plan.batch_size, plan.total_steps, plan.eval_every, plan.patience) == \
        (batch, total, every, 2)
    assert plan.floor_applied and plan.eval_widened
