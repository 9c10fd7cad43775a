"""Tests for trainer.summary_markdown (the dev examples table; the writer's text summary of it is
tested in test_summaries.py)."""

import numpy as np

from trainer import evaluation
from trainer.summary_markdown import examples_markdown


def test_examples_markdown_escapes_and_limits():
    predictions = [evaluation.SentencePrediction(i, ["O", "O"], ["B-PER", "O"], None)
                   for i in range(4)]
    sentences = [["|", "a"], ["*", "b"], ["c", "d"], ["e", "f"]]
    rows = examples_markdown(predictions, sentences, max_examples=2).splitlines()
    assert rows[2:] == ["| 0 | \\|a | \\| (PER) | (none) |", "| 1 | \\*b | \\* (PER) | (none) |"]
    words = [evaluation.SentencePrediction(0, ["B-LOC", "I-LOC"], ["B-LOC", "I-LOC"], None)]
    assert "New York (LOC)" in examples_markdown(words, [["New", "York"]])
    empty = examples_markdown(
        [evaluation.SentencePrediction(0, ["O"] * 6, ["O"] * 6, np.ones(6, bool))],
        [list("今天天气很好")])
    assert "(no sentence to show)" in empty
