"""Padding-free (packed) forward passes for the encoders we serve: BERT-family and DistilBERT.

A padded batch multiplies padding: batches gathered from concurrent requests mix lengths, and at
these lengths about 40% of a padded batch's FLOPs were padding. Here the projections, FFN and
LayerNorms run on the real tokens only, a [total_tokens, hidden] tensor; attention, about 1-2% of
the FLOPs at these lengths, runs once per sequence (the fastest of the schemes measured: per
sequence, block-diagonal mask, grouped by length). The loaded transformers modules supply every
weight; nothing of transformers is copied. Outputs equal the padded forward to 1e-5, and a text's
score does not depend on its batch-mates (tests/test_model.py).
"""

from collections.abc import Callable, Sequence

import torch
from torch.nn import functional


class PackedBatch:
    """Token ids of several texts laid end to end, with each text's offset."""

    def __init__(self, token_ids: Sequence[Sequence[int]], device: str):
        self.lengths = [len(ids) for ids in token_ids]
        self.input_ids = torch.tensor([token for ids in token_ids for token in ids], device=device)
        self.position_ids = torch.cat([torch.arange(length, device=device) for length in self.lengths])
        starts = [0]
        for length in self.lengths[:-1]:
            starts.append(starts[-1] + length)
        # Each text's first token ([CLS]), which the classification heads read.
        self.first_tokens = torch.tensor(starts, device=device)


def attend_per_sequence(query, key, value, lengths: list[int], heads: int) -> torch.Tensor:
    """Self-attention of each sequence over itself only, on packed [tokens, hidden] projections."""
    tokens, hidden = query.shape
    head_dim = hidden // heads
    # [tokens, hidden] -> [heads, tokens, head_dim], then one attention call per sequence.
    query, key, value = (tensor.view(tokens, heads, head_dim).transpose(0, 1) for tensor in (query, key, value))
    outputs = [
        functional.scaled_dot_product_attention(q, k, v)
        for q, k, v in zip(query.split(lengths, 1), key.split(lengths, 1), value.split(lengths, 1))
    ]
    return torch.cat(outputs, 1).transpose(0, 1).reshape(tokens, hidden)


def bert_logits(model, batch: PackedBatch) -> torch.Tensor:
    """BertForSequenceClassification (and its family: MiniLM and the like) on a packed batch."""
    bert = model.bert
    hidden = bert.embeddings(
        input_ids=batch.input_ids[None],
        token_type_ids=torch.zeros_like(batch.input_ids)[None],
        position_ids=batch.position_ids[None],
    )[0]
    heads = model.config.num_attention_heads
    for layer in bert.encoder.layer:
        attention = layer.attention
        context = attend_per_sequence(
            attention.self.query(hidden), attention.self.key(hidden), attention.self.value(hidden), batch.lengths, heads
        )
        hidden = attention.output.LayerNorm(attention.output.dense(context) + hidden)
        hidden = layer.output.LayerNorm(layer.output.dense(layer.intermediate(hidden)) + hidden)
    pooled = bert.pooler.activation(bert.pooler.dense(hidden[batch.first_tokens]))
    return model.classifier(pooled)


def distilbert_logits(model, batch: PackedBatch) -> torch.Tensor:
    """DistilBertForSequenceClassification on a packed batch."""
    distilbert = model.distilbert
    hidden = distilbert.embeddings(input_ids=batch.input_ids[None], position_ids=batch.position_ids[None])[0]
    heads = model.config.n_heads
    for layer in distilbert.transformer.layer:
        attention = layer.attention
        context = attend_per_sequence(
            attention.q_lin(hidden), attention.k_lin(hidden), attention.v_lin(hidden), batch.lengths, heads
        )
        hidden = layer.sa_layer_norm(attention.out_lin(context) + hidden)
        hidden = layer.output_layer_norm(layer.ffn.lin2(layer.ffn.activation(layer.ffn.lin1(hidden))) + hidden)
    pooled = torch.relu(model.pre_classifier(hidden[batch.first_tokens]))
    return model.classifier(pooled)


def packed_forward(model) -> Callable[[PackedBatch], torch.Tensor] | None:
    """The packed forward for this model, or None when its architecture must use the padded path."""
    config = model.config
    if type(model).__name__ == "BertForSequenceClassification" and config.model_type == "bert":
        # Relative position embeddings need the padded path's position handling.
        if getattr(config, "position_embedding_type", "absolute") == "absolute":
            return lambda batch: bert_logits(model, batch)
    if type(model).__name__ == "DistilBertForSequenceClassification":
        return lambda batch: distilbert_logits(model, batch)
    return None
