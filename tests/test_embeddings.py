"""The one sentence-embedding model: where it comes from and what its vectors are."""

from __future__ import annotations

import numpy as np
import pytest

from ptr_ray.embeddings import (
    DEFAULT_EMBEDDING_MODEL,
    EmbeddingModelError,
    SentenceEmbedder,
    resolve_embedding_model,
    shared_embedder,
)
from ptr_ray.errors import PtrRayValueError


def test_packaged_model_resolves_to_a_folder():
    path = resolve_embedding_model(DEFAULT_EMBEDDING_MODEL)
    assert (path / "config.json").is_file()


def test_unknown_source_is_one_line_error(tmp_path):
    with pytest.raises(EmbeddingModelError, match="neither a packaged name"):
        resolve_embedding_model("no-such-embedder")
    with pytest.raises(PtrRayValueError, match="nor a local model folder"):
        resolve_embedding_model(str(tmp_path))  # a folder without config.json


@pytest.mark.slow
def test_vectors_are_unit_length_and_rank_paraphrases_higher():
    emb = SentenceEmbedder()
    vecs = emb.encode(
        [
            "The cat sat on the mat.",
            "A cat was sitting on a mat.",
            "Stock markets fell sharply on Monday.",
        ]
    )
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]
    assert emb.encode([]).shape == (0, 384)


@pytest.mark.slow
def test_shared_embedder_loads_once():
    assert shared_embedder() is shared_embedder()
