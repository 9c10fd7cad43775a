"""Tokenizing pre-split tokens (characters or words) and placing labels on their first pieces.

Alignment, for the characters of "中国人" labelled B-LOC I-LOC O with a WordPiece tokenizer:

    characters      中      国      人
    pieces   [CLS]  中      国      人    [SEP]
    labels   -100   B-LOC   I-LOC   O     -100      (label ids in practice; -100 = IGNORE_ID)
    char_index -1   0       1       2     -1

A word split into several pieces ("Beijing" -> "Bei", "##jing") is labelled on "Bei" only;
"##jing" gets IGNORE_ID and char_index -1.

The SentencePiece trap. XLM-R style tokenizers (Metaspace pre-tokenizer, `prepend_scheme=always`)
treat every pre-split token as a word and prefix it with the word-boundary marker `▁`. For Chinese
characters they mostly have no `▁中` piece, so "中" becomes two pieces, a bare `▁` and `中`: the
sequence doubles and the label lands on the `▁`, which carries no character. For character-level
corpora this module switches the marker off (`prepend_scheme=never`), so each character is one
piece containing it; the tokenizer's own normaliser still maps full-width punctuation first
(`，` -> `,`), which is what makes those characters known. Word-level corpora keep the marker: there
it does mark the start of a word.

Lowercasing. A vocabulary without uppercase letters (bert-base-chinese's: its tokenizer_config
says do_lower_case false, and its normaliser does not lowercase) turns every word holding an
uppercase Latin letter into the unknown token: "Paris" -> [UNK], "paris" -> "paris". With
`lowercase=True` the tokenizer itself lowercases (a BERT normaliser as do_lower_case=True sets
it, which also strips accents as BERT's uncased models do; any other normaliser gets a
`Lowercase` step after it). The change is in the tokenizer's JSON, so the shards and everything
that runs the same JSON (the export's tokenizer, `serving.predict`, `tag_text`) lowercase alike;
the manifest records it as `tokenizer.lowercase` (and the fingerprint differs).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import os

WORD_BOUNDARY_MARKER = ("auto", "keep", "drop")
# A local tokenizer directory needs one of these: a fast tokenizer's tokenizer.json, or the
# vocabulary of a slow one that transformers converts (WordPiece vocab.txt; SentencePiece models
# of XLM-R, T5/ALBERT and Llama-style tokenizers; byte-level BPE's vocab.json with merges.txt).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model", "vocab.json")


@dataclasses.dataclass
class TokenizerInfo:
    """What the manifest records about the tokenizer, and what windows need.

    Attributes:
      name: the name or directory it was loaded from.
      fingerprint: sha256 of the backend tokenizer's JSON after our changes + special tokens.
      prefix_ids / suffix_ids: special-token ids around a single sequence (`[CLS]` / `[SEP]`).
      pad_token_id, unk_token_id: as the tokenizer defines them.
      word_boundary_marker: "dropped", "kept" or "none" (no Metaspace pre-tokenizer).
      lowercase: the tokenizer was made to lowercase (`prepare_tokenizer(lowercase=True)`);
        False when it lowercases by itself or not at all.
    """

    name: str
    fingerprint: str
    prefix_ids: list[int]
    suffix_ids: list[int]
    pad_token_id: int
    unk_token_id: int
    vocab_size: int
    word_boundary_marker: str
    lowercase: bool = False

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def load_tokenizer(name_or_dir: str | os.PathLike):
    """Loads a transformers *fast* tokenizer from a local directory or a hub name.

    Never runs remote code. A local directory is read offline.

    Raises:
      ValueError: the tokenizer cannot be loaded, or is not a fast tokenizer.
    """
    name = os.fspath(name_or_dir)
    local = os.path.isdir(name)
    if not local and os.path.exists(name):
        raise ValueError(f"tokenizer {name!r} is a file; give the directory that holds "
                         f"tokenizer.json (or a hub name)")
    if not local and (not _reads_as_hub_name(name) or os.path.isdir(os.path.dirname(name))):
        # A path (`../models/x`, or `models/x` beside an existing `models/`): transformers would
        # answer with a hub-name error ("Repo id must be in the form ...") or try the network.
        raise ValueError(f"tokenizer directory {name!r} does not exist")
    if local:
        problem = tokenizer_directory_problem(name)
        if problem:
            raise ValueError(problem)
    # transformers 5 advises at import that without PyTorch "Models won't be available": this
    # project uses it for tokenizers only, so that advice is not ours to print (issue #24). The
    # switch silences transformers' advisory warnings alone (`logger.warning_advice`), not its
    # real ones; a value the user set is kept.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, use_fast=True, local_files_only=local,
                                                  trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load tokenizer {name!r}: {e}") from None
    except (KeyError, TypeError) as e:  # transformers 5 on a malformed tokenizer.json
        raise ValueError(f"cannot load tokenizer {name!r}: malformed tokenizer files "
                         f"({type(e).__name__}: {e})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {name!r} is not a fast (Rust) tokenizer; word alignment needs "
                         f"one (a tokenizer.json in the directory)")
    return tokenizer


def tokenizer_directory_problem(directory: str | os.PathLike) -> str | None:
    """Why a local directory holds no tokenizer, or None if it has one of TOKENIZER_FILES.

    (transformers answers such a directory with a TypeError from deep inside, "stat: path should
    be string ... not NoneType".)
    """
    directory = os.fspath(directory)
    if any(os.path.isfile(os.path.join(directory, name)) for name in TOKENIZER_FILES):
        return None
    return (f"{directory} holds no tokenizer files: expected tokenizer.json, or the vocabulary "
            f"of a tokenizer transformers can convert ({', '.join(TOKENIZER_FILES[1:-1])}, or "
            f"vocab.json with merges.txt)")


def backend_tokenizer_json(tokenizer, name_or_dir: str | os.PathLike) -> str:
    """The backend tokenizer's JSON as transformers 4 built it: the tokenizer.json as written,
    its BERT normaliser set from the tokenizer's config.

    transformers 4 read a tokenizer.json as written and then set a BERT normaliser's options
    (lowercase, strip_accents, handle_chinese_chars) from the tokenizer config's do_lower_case,
    strip_accents and tokenize_chinese_chars. transformers 5's model-specific classes build the
    pipeline from their own definition instead, which for BERT gives that same normaliser but for
    XLM-R another normaliser and pre-tokenizer: that would change the pieces of some whitespace
    and every recorded tokenizer fingerprint. So the file is read (through `tokenizers`, which
    gives the JSON the fingerprint has always hashed) and only a BERT normaliser is taken from
    transformers; a tokenizer without a tokenizer.json (built from its vocabulary) is taken as
    transformers built it.

    Args:
      tokenizer: what `load_tokenizer(name_or_dir)` returned.
      name_or_dir: its directory or hub name (the hub's file comes from the cache `load_tokenizer`
        filled).

    Returns:
      The backend tokenizer's JSON.

    Raises:
      ValueError: the hub's file cannot be fetched.
    """
    from tokenizers import Tokenizer

    built = tokenizer.backend_tokenizer.to_str()
    name = os.fspath(name_or_dir)
    if os.path.isdir(name):
        path = os.path.join(name, "tokenizer.json")
        path = path if os.path.isfile(path) else None
    else:
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

        try:
            path = huggingface_hub.hf_hub_download(name, "tokenizer.json")
        except EntryNotFoundError:
            path = None
        except (HfHubHTTPError, OSError) as e:
            raise ValueError(f"cannot load tokenizer {name!r}: {e}") from None
    if path is None:
        return built
    written = json.loads(Tokenizer.from_file(path).to_str())
    normalizer = json.loads(built).get("normalizer") or {}
    if (written.get("normalizer") or {}).get("type") == normalizer.get("type") == "BertNormalizer":
        written["normalizer"] = normalizer
    return json.dumps(written, ensure_ascii=False)


def _reads_as_hub_name(name: str) -> bool:
    """`bert-base-chinese` or `hfl/rbt3`, not a path (`./x`, `../x`, `/x`, `~/x`, `a/b/c`)."""
    return (bool(name) and not name.startswith((".", "/", "~")) and name.count("/") <= 1
            and "\\" not in name)


def _set_prepend_never(pre_tokenizer_json: dict) -> bool:
    """Sets every Metaspace pre-tokenizer in a (nested) JSON to prepend_scheme=never."""
    changed = False
    if pre_tokenizer_json.get("type") == "Metaspace":
        if pre_tokenizer_json.get("prepend_scheme", "always") != "never":
            pre_tokenizer_json["prepend_scheme"] = "never"
            changed = True
    for child in pre_tokenizer_json.get("pretokenizers", []) or []:
        changed |= _set_prepend_never(child)
    return changed


def _has_metaspace(pre_tokenizer_json: dict | None) -> bool:
    if not pre_tokenizer_json:
        return False
    if pre_tokenizer_json.get("type") == "Metaspace":
        return True
    return any(_has_metaspace(c) for c in pre_tokenizer_json.get("pretokenizers", []) or [])


def normalizer_lowercases(normalizer_json: dict | None) -> bool:
    """Whether a backend normaliser (JSON) lowercases: a BERT normaliser with lowercase set, or
    a `Lowercase` step (also inside a Sequence)."""
    if not normalizer_json:
        return False
    if normalizer_json.get("type") == "Lowercase":
        return True
    if normalizer_json.get("type") == "BertNormalizer":
        return bool(normalizer_json.get("lowercase"))
    return any(normalizer_lowercases(c) for c in normalizer_json.get("normalizers", []) or [])


def _lowercasing(normalizer_json: dict | None) -> dict:
    """The normaliser JSON made to lowercase (see the module docstring)."""
    if normalizer_json and normalizer_json.get("type") == "BertNormalizer":
        return dict(normalizer_json, lowercase=True)
    if not normalizer_json:
        return {"type": "Lowercase"}
    return {"type": "Sequence", "normalizers": [normalizer_json, {"type": "Lowercase"}]}


def prepare_tokenizer(name_or_dir: str | os.PathLike, *, word_boundary_marker: str,
                      input_format: str, lowercase: bool = False):
    """Loads a tokenizer and returns (backend `tokenizers.Tokenizer`, `TokenizerInfo`).

    Args:
      name_or_dir: tokenizer directory or hub name.
      word_boundary_marker: "drop" (no `▁` before each pre-split token), "keep", or "auto"
        (drop for the character format, keep for word-level CoNLL).
      input_format: "char" or "conll".
      lowercase: make the tokenizer lowercase its input (module docstring); nothing changes
        (and the fingerprint stays) for a tokenizer that lowercases already.
    """
    from tokenizers import Tokenizer

    if word_boundary_marker not in WORD_BOUNDARY_MARKER:
        raise ValueError(f"word_boundary_marker must be one of {WORD_BOUNDARY_MARKER}, "
                         f"got {word_boundary_marker!r}")
    tokenizer = load_tokenizer(name_or_dir)
    config = json.loads(backend_tokenizer_json(tokenizer, name_or_dir))
    marker = "none"
    if _has_metaspace(config.get("pre_tokenizer")):
        drop = word_boundary_marker == "drop" or (
            word_boundary_marker == "auto" and input_format == "char")
        if drop:
            _set_prepend_never(config["pre_tokenizer"])
            marker = "dropped"
        else:
            marker = "kept"
    lowercased = lowercase and not normalizer_lowercases(config.get("normalizer"))
    if lowercased:
        config["normalizer"] = _lowercasing(config.get("normalizer"))
    # Padding and truncation are ours to do; a tokenizer.json may come with them switched on.
    config["padding"] = None
    config["truncation"] = None
    backend_json = json.dumps(config, ensure_ascii=False, sort_keys=True)
    backend = Tokenizer.from_str(backend_json)

    prefix_ids, suffix_ids = special_ids_around(backend, name_or_dir)
    with_specials = prefix_ids + [-1] + suffix_ids  # as the fingerprint has always hashed them
    unk_id = tokenizer.unk_token_id
    if unk_id is None:
        raise ValueError(f"tokenizer {name_or_dir!r} has no unknown token; it is needed for "
                         f"characters the vocabulary does not cover")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    fingerprint = hashlib.sha256(
        (backend_json + json.dumps([with_specials, pad_id, unk_id])).encode("utf-8")).hexdigest()
    info = TokenizerInfo(
        name=os.fspath(name_or_dir),
        fingerprint=fingerprint,
        prefix_ids=prefix_ids,
        suffix_ids=suffix_ids,
        pad_token_id=int(pad_id),
        unk_token_id=int(unk_id),
        vocab_size=int(backend.get_vocab_size(with_added_tokens=True)),
        word_boundary_marker=marker,
        lowercase=lowercased,
    )
    return backend, info


def special_ids_around(backend, name: str | os.PathLike) -> tuple[list[int], list[int]]:
    """The special-token ids the tokenizer puts before and after a single sequence, e.g.
    ([101], [102]) for BERT's [CLS] ... [SEP], ([0], [2]) for XLM-R's <s> ... </s>.

    Read from what the backend's post-processor does to a one-token sequence (the pieces it
    marks special), which is what encoding with special tokens gives.

    Raises:
      ValueError: the test token comes back as special tokens only.
    """
    encoding = backend.encode(["a"], is_pretokenized=True, add_special_tokens=True)
    inner = [i for i, special in enumerate(encoding.special_tokens_mask) if not special]
    if not inner:
        raise ValueError(f"tokenizer {os.fspath(name)!r}: cannot tell its special tokens from "
                         f"the text (encoding 'a' gave special tokens only: {encoding.ids})")
    return list(encoding.ids[:inner[0]]), list(encoding.ids[inner[-1] + 1:])


def tokenizer_lowercases(backend) -> bool:
    """Whether a backend `tokenizers.Tokenizer` lowercases its input."""
    return normalizer_lowercases(json.loads(backend.to_str()).get("normalizer"))


def unknown_tokens(ids: list[int], first_piece: list[int], unk_token_id: int) -> list[int]:
    """Indices of the tokens (characters or words) any of whose pieces is the unknown token.

    Args:
      ids, first_piece: as `pieces_per_token` returns them (token j owns pieces first_piece[j]
        .. first_piece[j+1]-1; every token has at least one piece).
      unk_token_id: the unknown token's id.

    Example: ids [7, 100, 9, 100], first_piece [0, 1, 3], unk 100 -> [1, 2] (token 1 owns
    pieces 1-2, token 2 piece 3).
    """
    if unk_token_id not in ids:
        return []
    owners = {bisect.bisect_right(first_piece, position) - 1
              for position, piece in enumerate(ids) if piece == unk_token_id}
    return sorted(owners)


class TokenEncoder:
    """Tokenizes pre-split sentences, each distinct token once.

    With `is_pretokenized=True`, tokenizers normalise and split every token on its own, so a
    token's pieces do not depend on its neighbours, and a cache of token -> pieces gives the same
    ids as encoding whole sentences (a test checks this on the real corpora) at a fraction of the
    cost: People's Daily has ~5,000 distinct characters in 2 million. The one exception is a
    Metaspace pre-tokenizer with `prepend_scheme="first"`, where the first token of a sentence is
    special; then whole sentences are encoded.
    """

    def __init__(self, backend, unk_token_id: int, max_cache_size: int = 1_000_000):
        self.backend = backend
        self.unk_token_id = unk_token_id
        self.max_cache_size = max_cache_size
        self.context_free = '"prepend_scheme":"first"' not in backend.to_str().replace(" ", "")
        self._cache: dict[str, tuple[int, ...]] = {}

    def encode(self, sentences: list[list[str]]) -> list[tuple[list[int], list[int], int]]:
        """Same contract as `pieces_per_token`."""
        if not self.context_free:
            return pieces_per_token(self.backend, sentences, self.unk_token_id)
        cache = self._cache
        missing = list({token for tokens in sentences for token in tokens if token not in cache})
        if missing:
            if len(cache) + len(missing) > self.max_cache_size:
                cache.clear()
            encodings = self.backend.encode_batch([[token] for token in missing],
                                                  is_pretokenized=True, add_special_tokens=False)
            for token, encoding in zip(missing, encodings):
                cache[token] = tuple(encoding.ids)
        out = []
        unk = self.unk_token_id
        for tokens in sentences:
            ids: list[int] = []
            first: list[int] = []
            pieceless = 0
            for token in tokens:
                first.append(len(ids))
                pieces = cache[token]
                if pieces:
                    ids.extend(pieces)
                else:
                    ids.append(unk)
                    pieceless += 1
            out.append(([] if pieceless == len(tokens) else ids, first, pieceless))
        return out


def pieces_per_token(backend, sentences: list[list[str]], unk_token_id: int
                     ) -> list[tuple[list[int], list[int], int]]:
    """Tokenizes a batch of pre-split sentences.

    Args:
      backend: a `tokenizers.Tokenizer` from `prepare_tokenizer`.
      sentences: each a list of tokens (characters or words).
      unk_token_id: inserted for a token that yields no piece at all (for example a zero-width
        character the normaliser drops), so every token keeps a position for its label.

    Returns:
      For each sentence, (piece ids, first_piece, pieceless) where first_piece[j] is the index in
      the piece list of token j's first piece (token j owns pieces first_piece[j] ..
      first_piece[j+1]-1) and pieceless counts the tokens that got the unknown token because the
      tokenizer gave them no piece. A sentence none of whose tokens gives a piece comes back with
      no ids at all, for the caller to reject.
    """
    encodings = backend.encode_batch(sentences, is_pretokenized=True, add_special_tokens=False)
    out = []
    for tokens, encoding in zip(sentences, encodings):
        ids = encoding.ids
        word_ids = encoding.word_ids
        n = len(tokens)
        first = [-1] * n
        previous = None
        for position, word in enumerate(word_ids):
            if word is not None and word != previous:
                first[word] = position
            previous = word
        pieceless = first.count(-1)
        if not ids:
            out.append(([], first, pieceless))
            continue
        if pieceless:  # some tokens produced no piece: give each one unknown-token piece
            new_ids: list[int] = []
            new_first = []
            owner = list(word_ids)
            cursor = 0
            for j in range(n):
                new_first.append(len(new_ids))
                if first[j] == -1:
                    new_ids.append(unk_token_id)
                    continue
                while cursor < len(ids) and owner[cursor] != j:
                    cursor += 1
                while cursor < len(ids) and owner[cursor] == j:
                    new_ids.append(ids[cursor])
                    cursor += 1
            ids, first = new_ids, new_first
        out.append((list(ids), first, pieceless))
    return out
