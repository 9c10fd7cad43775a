"""Dev and test evaluation during a run: entity F1 at a step, logged, summarised, stoppable.

The scoring itself is trainer.evaluation (model outputs -> entities -> seqeval-identical F1);
this is the run's side of it: the gold sentences read once per split, a progress bar, the
report in the log and TensorBoard, predictions files, and SIGTERM between two batches.
"""

from __future__ import annotations

import time

from absl import logging

from trainer import cache, checkpointing, evaluation, progress
from trainer.run_logs import RunLogs
from trainer.training_state import TrainingState


class StopRequested(Exception):
    """SIGTERM arrived during an evaluation (the loop saves, or has saved, and stops)."""


class StoppableBatches:
    """Iterates a dataset, raising StopRequested between batches once a stop is requested."""

    def __init__(self, dataset, stop: checkpointing.StopRequest | None):
        self._dataset = dataset
        self._stop = stop
        self.element_spec = dataset.element_spec

    def __iter__(self):
        for batch in self._dataset:
            if self._stop is not None and self._stop.requested:
                raise StopRequested()
            yield batch


class Evaluator:
    """Evaluates a split of the run's data with its model (chief only).

    Owns the gold sentences (read once per split) and the last result of each split, so a
    second evaluation at the same step (early stopping's, then the final one) is not repeated.
    """

    def __init__(self, state: TrainingState, logs: RunLogs | None,
                 stop: checkpointing.StopRequest | None):
        self.state = state
        self.logs = logs
        self.stop = stop
        self._gold: dict = {}
        self._evaluated: dict = {}  # split -> (step, EvaluationResult) of its last evaluation

    def evaluate(self, split: str, step: int, *, write_predictions: bool = False) -> dict:
        """Evaluates `split` at `step`; returns its metrics (f1, precision, recall, ...).

        Raises:
          StopRequested: SIGTERM arrived; the evaluation stopped between two batches.
        """
        if split not in self._gold:
            self._gold[split] = cache.read_gold(self.state.manifest, split)
        tokens, gold_tags = self._gold[split]
        cached = self._evaluated.get(split)
        if cached is not None and cached[0] == step:
            result = cached[1]  # e.g. early stopping evaluated dev at this step just before
        else:
            result = self._score(split, step, gold_tags)
            if self.logs is not None:
                self.logs.writer.eval(step, split, result.metrics)
                if split == "dev":
                    self.logs.writer.text_examples(step, result.predictions, tokens)
            self._evaluated[split] = (step, result)
        if write_predictions and self.state.chief:
            evaluation.write_predictions(self.state.run_dir / f"predictions_{split}.txt",
                                         result.predictions, tokens)
        return dict(result.metrics)

    def _score(self, split: str, step: int, gold_tags) -> evaluation.EvaluationResult:
        from data_pipeline.dataset import make_dataset

        state = self.state
        dataset = make_dataset(state.input_dir, split, batch_size=state.config.eval_batch_size,
                               shuffle=False, repeat=False, verify_checksums=False)
        counts = state.manifest["splits"][split]["counts"]
        logging.info("step %d %s: evaluating %d windows of %d sentences", step, split,
                     counts["windows"], counts["sentences"])
        # Windows done / total and ETA: a bar on a terminal, else a log line at the first
        # batch, every 30 s and at the last.
        bar = progress.ProgressBar(
            counts["windows"], description=f"{split} evaluation", unit="window",
            is_tty=None if state.config.progress_bar else False)
        started = time.time()
        try:
            result = evaluation.evaluate(state.model, StoppableBatches(dataset, self.stop),
                                         state.label_map, gold_tags=gold_tags,
                                         progress=bar.update)
        finally:
            bar.close()
        metrics = result.metrics
        logging.info("step %d %s: f1 %.4f precision %.4f recall %.4f token_accuracy %.4f "
                     "(%.1f s)\n%s", step, split, metrics["f1"], metrics["precision"],
                     metrics["recall"], metrics["token_accuracy"], time.time() - started,
                     evaluation.format_report(metrics, result.entity_counts))
        return result
