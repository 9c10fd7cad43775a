"""Property-based tests of `python -m serving.predict` input (#24): whatever bytes come in
(any Unicode, control characters, invalid UTF-8, empty and very long lines, CR LF), the command
exits 0 with no traceback, every input line is either tagged or reported on standard error as
skipped (empty, too long, nothing left after normalising), and every entity's offsets lie in
its line with `line[start:end] == text`. One tiny export (an untrained tiny BERT + CRF, which
tags at random, so there are entities everywhere; tests/serving/conftest.py) serves every
example; `main` runs in this process with its `Predictor` loaded once per setting.
"""

import io
import json
import re

import pytest
from absl import flags
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import serving
from serving import predict

SKIPPED = re.compile(r"line (\d+): (.*); skipped$")


@pytest.fixture(scope="module")
def run_predict(export_dir):
    """`predict.main` on bytes; its Predictor is made once per (batch size, line limit)."""
    predictors = {}

    def shared_predictor(directory, **kwargs):
        key = tuple(sorted(kwargs.items()))
        if key not in predictors:
            predictors[key] = serving.Predictor(directory, **kwargs)
        return predictors[key]

    def run(data: bytes, args: list[str]):
        stdout, stderr = io.StringIO(), io.StringIO()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(predict, "Predictor", shared_predictor)
            status = predict.main([f"--export_dir={export_dir}", *args],
                                  stdin=io.BytesIO(data), stdout=stdout, stderr=stderr)
        return status, stdout.getvalue(), stderr.getvalue()

    run.label_map = serving.read_export(export_dir).label_map
    return run


# Lines: any code point (lone surrogates aside: bytes cannot hold them), control characters and
# separators often, Chinese text, and lines longer than a window or than --max_line_chars.
CHARACTERS = st.one_of(
    st.characters(exclude_categories=("Cs",)),
    st.sampled_from("\x00\x1b\x7f\x85\u2028\u2029\u202e\u200b\ufeff\ufffd\u3000 \t\r\v\f"),
    st.sampled_from("北京上海张三李四说了的。"))
LINE = st.one_of(st.text(CHARACTERS, max_size=30),
                 st.sampled_from(["", " ", "\t\t", "\r", "\u3000\u3000"]),
                 st.integers(10, 60).map(lambda n: "北京欢迎你。" * n))
BAD_BYTES = st.sampled_from([b"\xff", b"\xc3", b"\xe4\xb8", b"\xed\xa0\x80", b"\x80\x80"])


@st.composite
def inputs(draw) -> bytes:
    """Lines joined by \\n or \\r\\n, some with invalid UTF-8 spliced in, maybe no final end."""
    out = bytearray()
    for line in draw(st.lists(LINE, min_size=1, max_size=6)):
        raw = line.replace("\n", " ").encode("utf-8")
        if draw(st.integers(0, 4)) == 0:
            at = draw(st.integers(0, len(raw)))
            raw = raw[:at] + draw(BAD_BYTES) + raw[at:]
        out += raw + draw(st.sampled_from([b"\n", b"\r\n"]))
    return bytes(out[:-1]) if draw(st.booleans()) else bytes(out)


def expected_lines(data: bytes) -> list[str]:
    """The lines as the command numbers and tags them (bad bytes replaced by U+FFFD)."""
    return [raw.decode("utf-8", "replace").rstrip("\r\n")
            for raw in io.BytesIO(data).readlines()]


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=inputs(), output_format=st.sampled_from(["jsonl", "conll"]),
       max_line_chars=st.sampled_from([None, 50]))
@example(data=b"\xff\xfe\x00\n\r\n\x1b[2J\n" + "\u202e北京".encode() + b"\xc3\n",
         output_format="jsonl", max_line_chars=None)
@example(data=("北" * (serving.MAX_LINE_CHARS + 1) + "\n上海").encode(), output_format="conll",
         max_line_chars=None)
def test_every_line_is_tagged_or_reported_and_entities_slice_their_line(
        run_predict, data, output_format, max_line_chars):
    args = [f"--format={output_format}", "--batch_size=3"]
    args += [f"--max_line_chars={max_line_chars}"] if max_line_chars else []
    status, out, err = run_predict(data, args)
    assert status == 0, err
    assert "Traceback" not in err and "error:" not in err, err
    lines = expected_lines(data)
    skipped = {}
    for report in err.splitlines():
        found = SKIPPED.match(report)
        if found:
            skipped[int(found.group(1))] = found.group(2)
        else:
            assert re.match(r"line \d+: invalid UTF-8 at byte \d+|note: ", report), report
    tagged = [number for number in range(1, len(lines) + 1) if number not in skipped]
    assert set(skipped) <= set(range(1, len(lines) + 1)), skipped
    for number, line in enumerate(lines, start=1):
        tokens, _ = serving.split_line(line, "char")
        limit = max_line_chars or serving.MAX_LINE_CHARS
        if len(line) > limit:
            assert "more than max_line_chars" in skipped.get(number, ""), (number, skipped)
        elif not tokens:
            assert skipped.get(number) == serving.EMPTY_LINE, (number, skipped)
        else:  # the only other reason: the normaliser leaves nothing of it
            assert skipped.get(number, serving.NORMALISED_AWAY) == serving.NORMALISED_AWAY
    if output_format == "jsonl":
        for row in out.splitlines():
            entity = json.loads(row)
            assert entity["line"] in tagged, entity
            line = lines[entity["line"] - 1]
            assert 0 <= entity["start"] < entity["end"] <= len(line), entity
            assert line[entity["start"]:entity["end"]] == entity["text"], entity
            assert f"B-{entity['type']}" in run_predict.label_map, entity
    else:
        blocks = out.split("\n\n")
        assert blocks.pop() == "", out[-200:]  # each tagged line's block ends in a blank line
        assert len(blocks) == len(tagged), (len(blocks), tagged)
        for number, block in zip(tagged, blocks):
            rows = block.split("\n")
            tokens, _ = serving.split_line(lines[number - 1], "char")
            assert len(rows) == len(tokens), (number, rows, tokens)
            assert all(row.rsplit(" ", 1)[1] in run_predict.label_map for row in rows), rows


def predict_flags():
    flag_values = flags.FlagValues()
    predict.define_flags(flag_values)
    return flag_values


PREDICT_FLAGS = predict_flags()
FLAG_VALUES = st.one_of(
    st.text(st.characters(exclude_characters="\x00", exclude_categories=()), max_size=10),
    st.integers(-(10 ** 12), 10 ** 12).map(str), st.floats().map(repr),
    st.sampled_from(["", "-1", "0", "1", "nan", "inf", "0x10", "/nonexistent", ".", "JSONL"]))


@pytest.mark.parametrize("name", sorted(PREDICT_FLAGS))
def test_a_wrong_value_of_any_predict_flag_is_one_error_naming_it(export_dir, name, tmp_path):
    """Flags of `python -m serving.predict`, enumerated from its FlagValues; an empty line as
    input (reported, so the model is never run)."""
    (tmp_path / "lines.txt").write_bytes(b" \n")

    @settings(max_examples=10, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(value=FLAG_VALUES)
    # --max_line_chars=-1 was accepted, and every line skipped as "more than max_line_chars=-1".
    @example(value="-1")
    def check(value):
        args = [f"--export_dir={export_dir}", f"--input_file={tmp_path / 'lines.txt'}",
                f"--{name}={value}"]
        stdout, stderr = io.StringIO(), io.StringIO()
        try:
            status = predict.main(args, stdin=io.BytesIO(b" \n"), stdout=stdout, stderr=stderr)
        except SystemExit as stop:  # a usage error: absl's message
            status = stop.code
        err = stderr.getvalue()
        assert "Traceback" not in err
        if status == 0:
            assert err == "line 1: empty line, nothing to tag; skipped\n", (value, err)
            flag_values = predict_flags()
            flag_values(["predict", *args])
            assert flag_values.batch_size >= 1 and flag_values.max_line_chars >= 0, value
            return
        assert status == 2, (value, status, err)
        [error] = [line for line in err.splitlines() if line.startswith("error: ")]
        assert f"--{name}" in error or value.strip() in error, (value, error)

    check()
