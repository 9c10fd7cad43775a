"""Serving an export directory: raw text lines -> tags and entities with character offsets.

    export_format   the export directory's layout (files, signatures) and `read_export`
    line_encoder    lines -> tokens -> pieces -> windows, exactly as preprocessing
    predictor       `Predictor`: lines -> windows -> the SavedModel -> merged tags and entities
    predict         the command line, `python -m serving.predict --export_dir=DIR [TEXT ...]`

This package imports only the standard library, numpy, the `tokenizers` library, TensorFlow
(lazily, when a `Predictor` loads the model) and the light modules of `data_pipeline` that
preprocessing itself uses to tokenize, cut windows and read tags (stdlib + numpy). It never
imports transformers, `models/` or `trainer/` (tests/test_import_rules.py checks it), so serving
needs neither the training stack nor the run directory. Export directories are written by
`trainer.export`.
"""

from serving.export_format import (
                                   EMPTY_LINE, EXPORT_FORMAT_VERSION, EXPORT_MANIFEST,
                                   INPUT_FORMATS, LABEL_MAP_FILE, MAX_LINE_CHARS, NORMALISED_AWAY,
                                   PREPROCESSING_FILE, SEPARATORS, SIGNATURE, SIGNATURE_NAME,
                                   TEXT_SIGNATURE, TEXT_SIGNATURE_NAME, TOKENIZER_FILE,
                                   TOKENIZER_INFO_FILE, WORD_TEXT_SIGNATURE, ExportError,
                                   ExportSettings, read_export, read_json)
from serving.line_encoder import EncodedLine, LineEncoder, split_line
from serving.predictor import LinePrediction, Predictor, entities_of

__all__ = [
    "EMPTY_LINE", "EXPORT_FORMAT_VERSION", "EXPORT_MANIFEST", "INPUT_FORMATS", "LABEL_MAP_FILE",
    "MAX_LINE_CHARS", "NORMALISED_AWAY", "PREPROCESSING_FILE", "SEPARATORS", "SIGNATURE",
    "SIGNATURE_NAME", "TEXT_SIGNATURE", "TEXT_SIGNATURE_NAME", "TOKENIZER_FILE",
    "TOKENIZER_INFO_FILE", "WORD_TEXT_SIGNATURE", "ExportError", "ExportSettings", "read_export",
    "read_json",
    "EncodedLine", "LineEncoder", "split_line", "LinePrediction", "Predictor", "entities_of",
]
