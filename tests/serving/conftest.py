"""The serving tests' export: one per session, shared by test_predict and its properties."""

import pytest

EXPORT_LABELS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
EXPORT_MAX_SEQ_LENGTH = 16  # budget 14: most People's Daily sentences need several windows


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory, bert_chinese_dir):
    """An untrained tiny BERT + CRF: it tags at random, so there are entities of every length.

    Read-only: a test that needs to change an export makes its own.
    """
    from data_pipeline import tags, tokenization
    from models import TaggerConfig, build_tagger
    from tests import trainer_testing as tt
    from trainer import export

    model = build_tagger(TaggerConfig(encoder_config=tt.TINY_BERT, head="crf",
                                      label_map=EXPORT_LABELS, dropout=0.0),
                         transition_constraints=tags.iob2_allowed_transitions(EXPORT_LABELS))
    backend, info = tokenization.prepare_tokenizer(bert_chinese_dir, word_boundary_marker="auto",
                                                   input_format="char")
    directory = tmp_path_factory.mktemp("predict") / "export"
    return export.export_model(model, directory, label_map=EXPORT_LABELS,
                               tokenizer_json=backend.to_str(), tokenizer_info=info.to_json(),
                               max_seq_length=EXPORT_MAX_SEQ_LENGTH, stride=4,
                               input_format="char")
