"""Tag raw text with an export: `python -m serving.predict --export_dir=DIR [TEXT ...]`.

    python -m serving.predict --export_dir=exports/pd "我爱北京天安门" "新华社北京电"
    python -m serving.predict --export_dir=exports/pd --input_file=news.txt > entities.jsonl
    cat news.txt | python -m serving.predict --export_dir=exports/pd --format=conll

Input: one sentence or document per line (the arguments, else --input_file, else standard
input). Output (standard output):

- `--format=jsonl` (default): one JSON object per entity, in input order,
  {"line": 1, "text": "北京", "type": "LOC", "start": 2, "end": 4, "score": 0.97}: `line` is the
  1-based number of the input line (or argument), `start`/`end` are character offsets into that
  line as given, so line[start:end] == text; `score` is the mean probability of the entity's tags
  (CRF: marginal probabilities).
- `--format=conll`: `token tag` lines (characters for character models, words for word models;
  spaces and tabs are not tokens and are not written), a blank line after each input line.
  Control characters (NUL, ESC, DEL, C1), line and paragraph separators and bidirectional
  overrides are written escaped (`\\x00`, `\\x1b`, `\\u202e`), never raw to a terminal; JSON
  lines escape the same characters as `\\u` sequences (the parsed text is unchanged).

Lines that cannot be tagged (empty, longer than --max_line_chars, nothing left after the
tokenizer's normaliser) are reported on standard error as `line N: ...; skipped`, invalid UTF-8
as `line N: invalid UTF-8 ...` (the bad bytes are replaced; the same for an argument, N being
its number), and the other lines are still tagged. Tokens the tokenizer does not know are tagged
from its unknown token, as in training, and summed up in one note at the end. A directory that
is not an export, or a missing input file (or a directory given as one), ends with `error: ...`
and exit status 2; there is never a traceback for bad input.

Lines are read and batched 256 at a time (one at a time when standard input is a terminal, so
each typed line is answered at once).

Flags are absl flags (`--helpfull` lists them, `--flagfile=FILE` reads them from a file); a bad or
missing flag ends with `error: ...` and exit status 2. Imports only the standard library, numpy,
absl, tokenizers and TensorFlow (see `serving`). `python -m trainer.predict` is an old name of
this command.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banners off stderr

from absl import flags  # noqa: E402

from data_pipeline.cli import parse_flags  # noqa: E402
from data_pipeline.manifest import strict_json_dumps  # noqa: E402
from serving.export_format import MAX_LINE_CHARS, ExportError  # noqa: E402
from serving.predictor import LinePrediction, Predictor  # noqa: E402

PROGRAM = "python -m serving.predict"

FORMATS = ("jsonl", "conll")
# Characters a terminal or a line-based reader would act on: C0 controls, DEL, C1 controls (CSI
# U+009B is ESC [), the Unicode line and paragraph separators, bidirectional embeddings,
# overrides and isolates (which reorder what is shown).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def define_flags(flag_values: flags.FlagValues) -> None:
    """Declares the command's flags on `flag_values`; the texts to tag are the other arguments
    (default: --input_file, else standard input)."""
    f = dict(flag_values=flag_values)
    flags.DEFINE_string("export_dir", None, "Directory from trainer.export.", required=True, **f)
    flags.DEFINE_string("input_file", None, "UTF-8 file, one text per line.", **f)
    flags.DEFINE_enum("format", "jsonl", FORMATS,
                      "jsonl: one entity per line; conll: `token tag` lines.", **f)
    flags.DEFINE_integer("batch_size", 32, "Windows per model call.", **f)
    flags.DEFINE_integer("max_line_chars", MAX_LINE_CHARS,
                         "Longer lines are reported and skipped (0: no limit).", lower_bound=0,
                         **f)


def _decode_lines(stream, warn) -> Iterator[str]:
    """Lines of a binary stream as text; invalid UTF-8 is replaced (and reported)."""
    for number, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            warn(f"line {number}: invalid UTF-8 at byte {e.start}; bad bytes replaced by U+FFFD "
                 f"(offsets count the replaced text)")
            yield raw.decode("utf-8", errors="replace")


def _decode_arguments(texts: Iterable[str], warn) -> Iterator[str]:
    """Command-line texts; bytes that are not UTF-8 are replaced (and reported), as in files.

    Python keeps such bytes of `sys.argv` as lone surrogates (U+DC80..U+DCFF), which no
    tokenizer or output stream accepts; they are turned back into the bytes given.
    """
    def as_bytes(text: str) -> bytes:
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate that is no escaped byte
            return text.encode("utf-8", "replace")

    return _decode_lines((as_bytes(text) for text in texts), warn)


def _escape_unsafe(text: str, json_escapes: bool = False) -> str:
    r"""NUL, ESC, ... as `\x00`, `\x1b` (or JSON's `\u0000`, `\u001b`); see `_UNSAFE`."""
    def escape(match: re.Match) -> str:
        code = ord(match.group())
        return f"\\u{code:04x}" if json_escapes or code > 0xFF else f"\\x{code:02x}"

    return _UNSAFE.sub(escape, text)


def write_prediction(prediction: LinePrediction, output_format: str, out) -> None:
    """Writes one line's prediction in `output_format` to the text stream `out`.

    Characters a terminal would act on are escaped (see the module docstring); a score that is
    not a finite number is written as JSON `null`.
    """
    if output_format == "jsonl":
        for entity in prediction.entities:
            record = {"line": prediction.line_number, **entity}
            text = strict_json_dumps(record, non_finite="null", ensure_ascii=False)
            out.write(_escape_unsafe(text, json_escapes=True) + "\n")
    else:
        out.writelines(f"{_escape_unsafe(token)} {tag}\n"
                       for token, tag in zip(prediction.tokens, prediction.tags))
        out.write("\n")


class _Report:
    """Per-line problems as they happen; tokens unknown to the tokenizer summed up at the end."""

    def __init__(self, warn):
        self.warn = warn
        self.unknown_lines: list[int] = []
        self.unknown_tokens: dict[str, int] = {}

    def add(self, prediction: LinePrediction) -> None:
        if prediction.error:
            self.warn(f"line {prediction.line_number}: {prediction.error}; skipped")
        elif prediction.unknown:
            self.unknown_lines.append(prediction.line_number)
            for token in prediction.unknown:
                self.unknown_tokens[token] = self.unknown_tokens.get(token, 0) + 1

    def close(self) -> None:
        if not self.unknown_lines:
            return
        common = sorted(self.unknown_tokens, key=lambda t: -self.unknown_tokens[t])[:10]
        lines = ", ".join(map(str, self.unknown_lines[:10]))
        more = ", ..." if len(self.unknown_lines) > 10 else ""
        self.warn(f"note: {sum(self.unknown_tokens.values())} token(s) in "
                  f"{len(self.unknown_lines)} line(s) ({lines}{more}) are unknown to the "
                  f"tokenizer and were tagged from its unknown token, as in training; most "
                  f"frequent: {' '.join(map(_escape_unsafe, common))}")


def main(argv: list[str] | None = None, *, stdin=None, stdout=None, stderr=None) -> int:
    """Runs the command line; returns the exit status (0 ok, 2 bad export or input file).

    Args:
      argv: the arguments without the program name (default: sys.argv[1:]).
      stdin: binary stream of lines (default: sys.stdin.buffer); stdout, stderr: text streams.

    Raises:
      SystemExit: 0 after --helpfull, 2 after a bad or missing flag (the message printed).
    """
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    args = flags.FlagValues()
    define_flags(args)
    texts = parse_flags(args, argv, program=PROGRAM, description=__doc__, positional=True,
                        stdout=stdout, stderr=stderr)

    def warn(message: str) -> None:
        print(message, file=stderr, flush=True)

    if args.batch_size < 1:
        warn(f"error: --batch_size must be >= 1, got {args.batch_size}")
        return 2
    if texts and args.input_file:
        warn("error: give texts as arguments or --input_file, not both")
        return 2
    interactive = not texts and not args.input_file and hasattr(stdin, "isatty") \
        and stdin.isatty()
    try:
        predictor = Predictor(args.export_dir, batch_size=args.batch_size,
                              max_line_chars=args.max_line_chars,
                              lines_per_chunk=1 if interactive else 256)
    except ExportError as e:
        warn(f"error: {e}")
        return 2
    stream = None
    if texts:
        lines = _decode_arguments(texts, warn)
    elif args.input_file:
        if os.path.isdir(args.input_file):
            warn(f"error: --input_file={args.input_file} is a directory, expected a file")
            return 2
        try:
            stream = open(args.input_file, "rb")
        except OSError as e:
            warn(f"error: --input_file={args.input_file}: {e.strerror}")
            return 2
        lines = _decode_lines(stream, warn)
    else:
        if interactive:
            warn("reading lines from standard input (end with Ctrl-D)")
        lines = _decode_lines(stdin, warn)
    report = _Report(warn)
    try:
        for prediction in predictor.predict_lines(lines):
            report.add(prediction)
            if not prediction.error:
                write_prediction(prediction, args.format, stdout)
                if interactive:
                    stdout.flush()
        stdout.flush()
        report.close()
    except BrokenPipeError:  # e.g. `| head`: the reader is gone, nothing left to do
        sys.stderr = open(os.devnull, "w")
    finally:
        if stream is not None:
            stream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
