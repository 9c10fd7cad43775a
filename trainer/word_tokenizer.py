"""A word's pieces inside the graph, for the "tag_text" signature of word-level models.

A word-level model's text-in signature must give every whitespace-separated word exactly the
pieces preprocessing gave it (`data_pipeline.tokenization.TokenEncoder`: tokenizers'
`encode_batch([[word]], is_pretokenized=True, add_special_tokens=False)`). For a BERT-style
WordPiece tokenizer the four stages of tokenizers are reproduced with tensorflow-text and tables
that the export builds by running the real tokenizer's parts over every code point:

    stage in tokenizers         in the graph
    added tokens ([SEP], ...)   a regular expression of their text (with the whitespace an
                                lstrip / rstrip token takes along), in the raw word
    normaliser                  `WordPieceTables.normalized`: what the real normaliser makes of
      (BertNormalizer)          each code point alone (controls removed, CJK padded with spaces,
                                lowercased and accents stripped where it does)
    pre-tokenizer               `WordPieceTables.classes`: per code point, from the real
      (BertPreTokenizer)        pre-tokenizer: whitespace splits and is dropped, punctuation is
                                a pre-token of its own
    WordPiece                   tf_text.FastWordpieceTokenizer (greedy longest match first, as
                                tokenizers); a pre-token of more than max_input_chars_per_word
                                characters is the unknown token

    word       "Café-au-lait"   (lowercasing tokenizer)
    normalised "cafe-au-lait"   (é -> e: accents stripped)
    pre-tokens cafe | - | au | - | lait
    pieces     ca ##fe | - | au | - | la ##it

The tables are exact because these normalisers and this pre-tokenizer act on one character at a
time (the one exception, canonical reordering of combining marks before accents are stripped, is
checked: see `unsupported_reason`). Other tokenizers get no "tag_text"; `unsupported_reason` says
why. A SentencePiece (Unigram) tokenizer is one of them, though tensorflow-text has a
SentencepieceTokenizer: built from the same tokenizer.json it splits runs of a repeated character
in another order when several splits score the same ("6.0000000e-01": "0" "000" vs "000" "0"),
and keeps a combining mark after a normalised character where tokenizers drops it, so its pieces
differ from preprocessing's for such words.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import unicodedata
from typing import Any

import numpy as np

_CODE_POINTS = 0x110000
# Pre-token classes (`WordPieceTables.classes`).
OTHER, WHITESPACE, PUNCTUATION = 0, 1, 2
NORMALIZERS = ("BertNormalizer", "Lowercase")


@dataclasses.dataclass(frozen=True)
class CodePointMap:
    """A map from every code point to a sequence of code points, run-length encoded.

    Entry k covers code points starts[k] .. starts[k + 1] - 1 (the last up to U+10FFFF). Its
    output for a code point c is values[row_splits[k]:row_splits[k + 1]], each value plus c where
    `relative` is set. So one entry holds a whole run of code points that map alike:

        starts    65 ('A')             91 ('[')    19968 ('一')
        output    [c + 32] (lowercase) [c]         [32, c, 32] (CJK padded with spaces)

    Attributes:
      starts: int32 [K] increasing, starts[0] = 0.
      row_splits: int64 [K + 1].
      values: int32 [total]; relative: bool [total].
    """

    starts: Any
    row_splits: Any
    values: Any
    relative: Any

    def __call__(self, code_point: int) -> list[int]:
        """The output for one code point (for tests and debugging)."""
        k = int(np.searchsorted(self.starts, code_point, side="right")) - 1
        values = self.values[self.row_splits[k]:self.row_splits[k + 1]]
        relative = self.relative[self.row_splits[k]:self.row_splits[k + 1]]
        return [int(v) + code_point * int(r) for v, r in zip(values, relative)]


def code_point_map(code_points: np.ndarray, lengths: np.ndarray, values: np.ndarray,
                   *, near: int = 64) -> CodePointMap:
    """Run-length encodes what a function gives every code point.

    An output value within `near` of its code point is stored relative to it (identity, case
    mappings), any other as it is (a stripped accent's base letter, the spaces around CJK), so
    that consecutive code points that map alike share one entry.

    Args:
      code_points: int64 [N] increasing, from 0 (code points left out, the surrogates, join the
        entry before them: decoded text never holds them).
      lengths: int64 [N], the output length of each.
      values: int64 [sum(lengths)], the outputs one after the other.
      near: see above.
    """
    width = max(int(lengths.max(initial=0)), 1)
    filled = np.arange(width)[None, :] < lengths[:, None]           # [N, width]
    matrix = np.zeros(filled.shape, np.int64)
    matrix[filled] = values
    delta = matrix - code_points[:, None]
    relative = filled & (np.abs(delta) <= near)
    encoded = np.where(relative, delta, matrix)
    encoded[~filled] = -1
    same = ((lengths[1:] == lengths[:-1]) & (encoded[1:] == encoded[:-1]).all(axis=1)
            & (relative[1:] == relative[:-1]).all(axis=1))
    first = np.concatenate([[True], ~same])
    kept = filled[first]
    return CodePointMap(code_points[first].astype(np.int32),
                        np.concatenate([[0], np.cumsum(lengths[first])]).astype(np.int64),
                        encoded[first][kept].astype(np.int32), relative[first][kept])


@dataclasses.dataclass(frozen=True)
class AddedToken:
    """A token tokenizers finds in the raw text before anything else ([CLS], [SEP], ...).

    Attributes:
      content: its text; token_id: its id.
      lstrip, rstrip: it takes the whitespace before / after it along.
    """

    content: str
    token_id: int
    lstrip: bool
    rstrip: bool


@dataclasses.dataclass(frozen=True)
class WordPieceTables:
    """What the graph needs to tokenize words as a WordPiece tokenizer does (module docstring).

    Attributes:
      normalized: the normaliser's output for each code point alone.
      class_starts: int32 [R] increasing; classes: int32 [R], OTHER, WHITESPACE or PUNCTUATION
        for code points class_starts[r] .. class_starts[r + 1] - 1, as the pre-tokenizer treats
        them.
      whitespace: the code points the pre-tokenizer splits on (what lstrip/rstrip take along).
      vocab: the pieces, index = id.
      continuing_prefix: "##" (what marks a piece inside a word).
      unk_token, unk_token_id: the unknown token.
      max_input_chars: longer pre-tokens are the unknown token.
      added_tokens: found in the raw word first.
    """

    normalized: CodePointMap
    class_starts: Any
    classes: Any
    whitespace: tuple[int, ...]
    vocab: tuple[str, ...]
    continuing_prefix: str
    unk_token: str
    unk_token_id: int
    max_input_chars: int
    added_tokens: tuple[AddedToken, ...]

    def pre_token_class(self, code_point: int) -> int:
        """OTHER, WHITESPACE or PUNCTUATION (for tests and debugging)."""
        return int(self.classes[np.searchsorted(self.class_starts, code_point, side="right") - 1])


def _normalizer_steps(normalizer: dict | None) -> list[dict]:
    if not normalizer:
        return []
    if normalizer.get("type") == "Sequence":
        return [step for child in normalizer.get("normalizers", []) or []
                for step in _normalizer_steps(child)]
    return [normalizer]


def _strips_accents(steps: list[dict]) -> bool:
    """Whether a BertNormalizer step decomposes (NFD) and drops non-spacing marks."""
    for step in steps:
        if step["type"] == "BertNormalizer":
            strip = step.get("strip_accents")
            if strip or (strip is None and step.get("lowercase", True)):
                return True
    return False


def unsupported_reason(tokenizer_json: str) -> str | None:
    """Why `tag_text` cannot reproduce this tokenizer's pieces for a word, or None if it can.

    Args:
      tokenizer_json: the backend tokenizer JSON preprocessing used.
    """
    config = json.loads(tokenizer_json)
    model = config.get("model") or {}
    kind = model.get("type")
    if kind == "Unigram":
        return ("SentencePiece (Unigram) tokenizer: tensorflow-text's SentencepieceTokenizer, "
                "built from the same pieces and scores, splits some words differently from "
                "tokenizers (runs of a repeated character such as '6.0000000e-01' when several "
                "splits score the same, combining marks after a normalised character), so "
                "tag_text could not promise serving.predict's entities")
    if kind != "WordPiece":
        return (f"{kind} tokenizer: tensorflow-text has no in-graph equivalent of its merges "
                f"(only WordPiece tokenizers, as BERT's, get tag_text)")
    pre_tokenizer = (config.get("pre_tokenizer") or {}).get("type")
    if pre_tokenizer != "BertPreTokenizer":
        return (f"WordPiece tokenizer with pre-tokenizer {pre_tokenizer}: tag_text reproduces "
                f"BertPreTokenizer only")
    steps = _normalizer_steps(config.get("normalizer"))
    for step in steps:
        if step.get("type") not in NORMALIZERS:
            return (f"WordPiece tokenizer with normaliser {step.get('type')}: tag_text "
                    f"reproduces normalisers that act on one character at a time "
                    f"({', '.join(NORMALIZERS)})")
    for token in config.get("added_tokens") or []:
        if token.get("normalized") or token.get("single_word"):
            return (f"added token {token.get('content')!r} is matched after normalising or as a "
                    f"single word only; tag_text finds added tokens in the raw text only")
    vocab = model.get("vocab") or {}
    if sorted(vocab.values()) != list(range(len(vocab))):
        return "WordPiece vocabulary ids are not 0 .. size - 1"
    if model.get("unk_token") not in vocab:
        return f"WordPiece unknown token {model.get('unk_token')!r} is not in the vocabulary"
    if _strips_accents(steps):
        # NFD reorders combining marks by class; per character it does not. Only marks that are
        # not dropped (not Mn) and that the vocabulary holds could come out in another order.
        kept_marks = {c for piece in vocab for c in piece if unicodedata.combining(c)
                      and unicodedata.category(c) != "Mn"}
        if kept_marks:
            return (f"the vocabulary holds combining marks that stripping accents keeps and may "
                    f"reorder ({''.join(sorted(kept_marks))!r})")
    return None


def _normalized(normalizer, code_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, values): what the normaliser gives each code point alone.

    One call on all of them with a separator between each two (U+1F600, which these normalisers
    keep and which, a starter, no combining mark moves across): the normaliser acts on one
    character at a time, so its output is theirs one after the other. That no other code point's
    output holds the separator is checked (else each is normalised alone, ~10 times slower).
    """
    if normalizer is None:
        return np.ones(len(code_points), np.int64), code_points.astype(np.int64)
    separator = 0x1F600
    others = code_points[code_points != separator]
    out = np.frombuffer(normalizer.normalize_str(chr(separator).join(map(chr, others))).encode(
        "utf-32-le"), np.uint32).astype(np.int64)
    borders = np.flatnonzero(out == separator)
    if len(borders) == len(others) - 1:
        lengths = np.diff(np.concatenate([[-1], borders, [len(out)]])) - 1
        values = out[out != separator]
    else:
        outputs = [[ord(c) for c in normalizer.normalize_str(chr(c))] for c in others]
        lengths = np.asarray([len(o) for o in outputs], np.int64)
        values = np.asarray([c for o in outputs for c in o], np.int64)
    own = [ord(c) for c in normalizer.normalize_str(chr(separator))]
    position = int(np.searchsorted(others, separator))
    return (np.insert(lengths, position, len(own)),
            np.insert(values, int(lengths[:position].sum()), own).astype(np.int64))


def _pre_token_classes(pre_tokenizer, code_points: np.ndarray) -> np.ndarray:
    """Each code point's class, from one call of the real pre-tokenizer on "a" c1 "a" c2 ... "a":
    a code point no split covers is whitespace, one alone in its split between two "a"s is
    punctuation, the others join their neighbours."""
    text = "a" + "a".join(map(chr, code_points)) + "a"
    covered = np.zeros(len(text) + 1, np.int64)
    alone = np.zeros(len(text), bool)
    for _, (begin, end) in pre_tokenizer.pre_tokenize_str(text):
        covered[begin] += 1
        covered[end] -= 1
        alone[begin] |= end - begin == 1
    covered = np.cumsum(covered)[:-1] > 0
    positions = 2 * np.arange(len(code_points)) + 1
    return np.where(~covered[positions], WHITESPACE,
                    np.where(alone[positions], PUNCTUATION, OTHER)).astype(np.int32)


@functools.lru_cache(maxsize=4)
def _code_point_tables(normalizer_json: str, pre_tokenizer_json: str):
    """(normalised, class_starts, classes, whitespace) of `WordPieceTables`: the expensive part,
    shared by tokenizers that differ in their vocabulary only."""
    from tokenizers import Tokenizer

    parts = Tokenizer.from_str(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": json.loads(normalizer_json), "pre_tokenizer": json.loads(pre_tokenizer_json),
        "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0}, "unk_token": "[UNK]"}}))
    code_points = np.asarray([c for c in range(_CODE_POINTS) if not 0xD800 <= c <= 0xDFFF],
                             np.int64)
    lengths, values = _normalized(parts.normalizer, code_points)
    classes = _pre_token_classes(parts.pre_tokenizer, code_points)
    changes = np.concatenate([[True], classes[1:] != classes[:-1]])
    return (code_point_map(code_points, lengths, values),
            code_points[changes].astype(np.int32), classes[changes],
            tuple(int(c) for c in code_points[classes == WHITESPACE]))


def wordpiece_tables(tokenizer_json: str) -> WordPieceTables:
    """Runs the tokenizer's normaliser and pre-tokenizer over every code point (10-15 s on this
    project's 2-core machine with other jobs running; cached per normaliser and pre-tokenizer
    within a process).

    Raises:
      ValueError: the tokenizer is not supported (`unsupported_reason` says why).
    """
    reason = unsupported_reason(tokenizer_json)
    if reason:
        raise ValueError(reason)
    config = json.loads(tokenizer_json)
    model = config["model"]
    normalized, class_starts, classes, whitespace = _code_point_tables(
        json.dumps(config.get("normalizer"), sort_keys=True),
        json.dumps(config["pre_tokenizer"], sort_keys=True))
    vocab = [""] * len(model["vocab"])
    for piece, index in model["vocab"].items():
        vocab[index] = piece
    return WordPieceTables(
        normalized=normalized, class_starts=class_starts, classes=classes,
        whitespace=whitespace, vocab=tuple(vocab),
        continuing_prefix=model.get("continuing_subword_prefix", "##"),
        unk_token=model["unk_token"], unk_token_id=int(model["vocab"][model["unk_token"]]),
        max_input_chars=int(model.get("max_input_chars_per_word", 100)),
        added_tokens=tuple(AddedToken(t["content"], int(t["id"]), bool(t.get("lstrip")),
                                      bool(t.get("rstrip")))
                           for t in config.get("added_tokens") or []))


def fast_wordpiece_model(tables: WordPieceTables) -> bytes:
    """The model of tf_text.FastWordpieceTokenizer for the vocabulary (a flatbuffer, stored in
    the graph): words given already split (no pre-tokenization), long enough for any pre-token
    of max_input_chars characters (4 bytes each at most)."""
    import tensorflow_text as tf_text

    return tf_text.build_fast_wordpiece_model(
        list(tables.vocab), max(4 * tables.max_input_chars, len(tables.unk_token.encode())),
        tables.continuing_prefix, tables.unk_token, True, False)
