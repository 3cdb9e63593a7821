"""Visual branch (paper Section 3.3, "Visual modality"): caption -> Sentence-BERT -> visual head.

The caption sentences of one utterance are joined into one sequence and embedded with a
Sentence-BERT model loaded from a local directory (the paper: all-mpnet-base-v2, 768-d; the embedded
default here: all-MiniLM-L6-v2 from PyPI, 384-d). The visual head is the CMKD student: an MLP whose
hidden state h_visual has the text branch's width, so the feature loss can compare it with h_text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from ddvlm_core.labels import NUM_LABELS
from ddvlm_core.text import require_safetensors


class CaptionEmbedder:
    """Sentence-BERT embedding of captions, from a local SentenceTransformer directory (frozen)."""

    def __init__(self, path: str, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        self.path = require_safetensors(path, "caption embedder")
        self.model = SentenceTransformer(self.path, device=device, trust_remote_code=False,
                                         model_kwargs={"use_safetensors": True})
        self.model.eval()
        self.dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") \
            else self.model.get_sentence_embedding_dimension()

    @torch.no_grad()
    def embed(self, captions: Sequence[str], batch_size: int = 32) -> Tensor:
        """(B, dim) float32 embeddings; captions with several sentences are embedded as one sequence."""
        if not captions:
            return torch.zeros((0, self.dim))
        out = self.model.encode(list(captions), batch_size=batch_size, convert_to_tensor=True,
                                show_progress_bar=False)
        return out.float().cpu()


@dataclass
class VisualOutput:
    logits: Tensor  # z_v (B, C)
    hidden: Tensor  # h_visual (B, H), H = the text branch's width


class VisualHead(nn.Module):
    """h_visual = Dropout(GELU(W_1 LN(e))) ; z_v = W_2 h_visual  (e: Sentence-BERT caption embedding)."""

    def __init__(self, embed_dim: int, hidden_dim: int, num_labels: int = NUM_LABELS, dropout: float = 0.2):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.proj = nn.Linear(embed_dim, hidden_dim)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_dim, num_labels)

    def forward(self, caption_embedding: Tensor) -> VisualOutput:
        hidden = self.dropout(self.act(self.proj(self.norm(caption_embedding))))
        return VisualOutput(self.head(hidden), hidden)
