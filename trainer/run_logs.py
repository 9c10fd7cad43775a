"""A run's logs, each step in them once: train_log.jsonl and the TensorBoard event files.

Only the chief writes them. A resumed (or recovered) run trains the steps after its checkpoint
again and logs them again, so what an earlier attempt wrote for them is removed first: records
from train_log.jsonl (`train_log.truncate_train_log`), events from the event files (plus a
restart marker for a TensorBoard that already read them: `summaries.SummaryWriter.restart`).
"""

from __future__ import annotations

import pathlib

from trainer import event_truncation, summaries, train_log, variables_report
from trainer.run_dir import TRAIN_LOG


class RunLogs:
    """Owns RUN_DIR/train_log.jsonl and the run's SummaryWriter (`writer`).

    Attributes:
      writer: the open `summaries.SummaryWriter` (replaced by each `reopen`).
      records: train_log.jsonl's records kept by the last `reopen` (the steps before it).
    """

    def __init__(self, run_dir: pathlib.Path):
        self.run_dir = run_dir
        self.writer: summaries.SummaryWriter | None = None
        self.records: list[dict] = []

    @property
    def path(self) -> pathlib.Path:
        return self.run_dir / TRAIN_LOG

    def open_fresh(self, config: dict, report) -> None:
        """Opens the logs of a run without a checkpoint (maybe one killed before its first):
        hyperparameters, and the variables table with a learning rate of 0 for each frozen
        group (train/lr/<group>) at step 0, so TensorBoard shows what is frozen."""
        self.reopen(-1, -1)
        self.writer.hparams(config)
        if report is None:
            return
        self.writer.text(0, "variables", variables_report.to_markdown(report.data))
        frozen = [g["name"] for g in report.data["groups"] if not g["trainable"]]
        self.writer.frozen_learning_rates(0, frozen)

    def open_resumed(self, restored: int, *, finished: bool) -> None:
        """Opens the logs of a run restored at step `restored`.

        A run that had finished training repeats its final evaluation at the last step, and a
        run stopped during a dev evaluation repeats it (`finished`): then that step's events go
        too, and its training record is written again from train_log.jsonl.
        """
        self.reopen(restored, restored - 1 if finished else restored)
        if finished and self.records and self.records[-1]["step"] == restored:
            self.write_train_summaries(self.records[-1])

    def reopen(self, last_logged: int, last_event: int) -> None:
        """Keeps train_log.jsonl records up to step `last_logged` and events up to
        `last_event`, then (re)opens the event writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        (self.run_dir / (TRAIN_LOG + ".tmp")).unlink(missing_ok=True)
        self.records = train_log.truncate_train_log(self.path, max(last_logged, 0))
        event_truncation.truncate_event_files(self.run_dir, last_event)
        self.writer = summaries.SummaryWriter(str(self.run_dir))
        self.writer.restart(last_event + 1)

    def log_train(self, record: dict) -> None:
        """Appends a training record (step, loss, learning_rate, grad_norm, throughput,
        loss_scale) to train_log.jsonl and writes it as TensorBoard scalars."""
        train_log.append_record(self.path, record)
        self.write_train_summaries(record)

    def write_train_summaries(self, record: dict) -> None:
        self.writer.train_step(record["step"], loss=record["loss"],
                               lr_by_group=record.get("learning_rate"),
                               grad_norm_by_group=record.get("grad_norm"),
                               loss_scale=record.get("loss_scale"),
                               tokens_per_s=record.get("tokens_per_s"),
                               # records of older versions: sentences_per_s (also windows)
                               windows_per_s=record.get("windows_per_s",
                                                        record.get("sentences_per_s")))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
