"""Embedding networks that compress x into a summary vector, and shared building blocks.

Every built-in net records the keyword arguments it was built with in ``.spec`` so a saved
model can rebuild it without pickling code: ``build_embedding(spec)`` inverts ``net.spec``.
A user's own ``nn.Module`` works too; then it is passed again to :func:`simgen.load`.
"""

from __future__ import annotations

from .embeddings import (
    MLP,
    CNN1d,
    CNN2d,
    DeepSet,
    Identity,
    SetAttention,
    SetPooling,
    build_embedding,
    embedding_spec,
)

__all__ = [
    "MLP",
    "CNN1d",
    "CNN2d",
    "DeepSet",
    "Identity",
    "SetAttention",
    "SetPooling",
    "build_embedding",
    "embedding_spec",
]
