"""Dev sentences with their gold and predicted entities, as a markdown table for TensorBoard."""

from __future__ import annotations

from collections.abc import Sequence

from data_pipeline.tags import Entity, extract_entities
from trainer import evaluation

_MARKDOWN_SPECIAL = "\\`*_[]<>#|~"


def _escape_markdown(text: str) -> str:
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in text)


def _join(tokens: Sequence[str], span: Sequence[str]) -> str:
    """`span` (tokens of the sentence `tokens`) as escaped text: characters joined as they
    are, words with a space between them."""
    separator = "" if all(len(t) == 1 for t in tokens) else " "
    return _escape_markdown(separator.join(span))


def _entity_text(tokens: Sequence[str], entity: Entity) -> str:
    return _join(tokens, tokens[entity.start:entity.end]) + f" ({entity.type})"


def examples_markdown(predictions: Sequence[evaluation.SentencePrediction],
                      sentences: Sequence[Sequence[str]], *, max_examples: int = 5,
                      only_with_entities: bool = True) -> str:
    """A markdown table: sentence id, sentence, gold entities, predicted entities (a wrong
    prediction is struck through).

    Args:
      predictions: the sentences' gold and predicted tags (`SentencePrediction.gold`, `.pred`).
      sentences: source tokens (characters or words) indexed by sentence_id; characters are
        joined without a space, words with one.
      max_examples: how many sentences to show: the first ones by sentence_id.
      only_with_entities: skip the sentences without a gold entity.

    Returns:
      The table; with no sentence to show, one row that says so.
    """
    rows = ["| id | sentence | gold entities | predicted entities |",
            "|---:|---|---|---|"]
    shown = 0
    for prediction in sorted(predictions, key=lambda p: p.sentence_id):
        if shown >= max_examples:
            break
        gold = extract_entities(prediction.gold)
        if only_with_entities and not gold:
            continue
        tokens = list(sentences[prediction.sentence_id])
        pred = extract_entities(prediction.pred)
        gold_set = set(gold)
        rendered_pred = [_entity_text(tokens, e) if e in gold_set
                         else f"~~{_entity_text(tokens, e)}~~" for e in pred]
        rows.append(f"| {prediction.sentence_id} | {_join(tokens, tokens)} | "
                    f"{', '.join(_entity_text(tokens, e) for e in gold) or '(none)'} | "
                    f"{', '.join(rendered_pred) or '(none)'} |")
        shown += 1
    if not shown:
        rows.append("| | (no sentence to show) | | |")
    return "\n".join(rows)
