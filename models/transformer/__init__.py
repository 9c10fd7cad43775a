"""The project's own BERT-family encoder in TensorFlow (Keras 2): BERT, RoBERTa, XLM-RoBERTa and
the ELECTRA discriminator, built from a Hugging Face config.json and loaded from its
model.safetensors (PyTorch names) or tf_model.h5 (TensorFlow names), without transformers' model
classes.

    config.py       EncoderConfig: the hyperparameters, from config.json
    embeddings.py   word + position + token type embeddings
    attention.py    self-attention with one fused QKV projection; the padding mask
    block.py        one transformer block
    backbone.py     TransformerBackbone (all blocks), TransformerEncoder (the tagger's view)
    names.py        checkpoint weight names -> variables
    files.py        finding and reading checkpoint files
    checkpoint.py   load_transformer, load_weights, save_pretrained
    report.py       LoadingInfo, the loading report

    backbone = load_transformer(pretrained="../shared/models/multilingual-e5-small-zh")
    print(backbone.loading_info.summary())   # pretrained weights: 197 loaded, pooler (2) ...
    encoder = TransformerEncoder(backbone, num_layers_used=4)
    hidden_states = encoder(input_ids, attention_mask, training=False)["hidden_states"]
"""

from models.transformer.backbone import TransformerBackbone, TransformerEncoder
from models.transformer.checkpoint import load_transformer, load_weights, save_pretrained
from models.transformer.config import EncoderConfig
from models.transformer.files import CheckpointError
from models.transformer.names import WeightSlot, weight_slots
from models.transformer.report import LoadingInfo

__all__ = ["CheckpointError", "EncoderConfig", "LoadingInfo", "TransformerBackbone",
           "TransformerEncoder", "WeightSlot", "load_transformer", "load_weights",
           "save_pretrained", "weight_slots"]
