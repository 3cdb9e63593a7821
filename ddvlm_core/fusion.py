"""Residual gated fusion (paper Section 3.6).

    h~_v  = W2 ReLU(W1 LN(h_v))                                  projection of h_v to the text space
    g     = clamp(sigma(W_g [h_t || h~_v || h_t - h~_v || h_t * h~_v]), 0.05, 0.5)
    delta = W_c Dropout(LN(h_fused - h_t))                        residual correction logits
    z     = z_t + alpha g s_cos s_conf delta                      alpha learnable, initialised to 0.3

The paper leaves three quantities undefined; the readings (shared/notes/paper-readings.md) are:
    h_fused = (1 - g) h_t + g h~_v             the gate mixes the projected visual state into the text state
    s_cos   = (1 + cos(h_t, h~_v)) / 2          cosine similarity mapped to [0, 1]
    s_conf  = max_c softmax(z_v)_c, detached     confidence of the visual logits, in [1/C, 1]
g is one scalar per sample (W_g: 4d -> 1). A sample without a caption gets z = z_t exactly, and
alpha = 0 gives z = z_t exactly for every sample.

``ConcatFusion`` is Table 4's "w/o Residual Fusion": the simple feature concatenation that Section 3.6 sets
residual fusion against, z = W Dropout([h_t || h_v]), on the same frozen branches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GATE_MIN, GATE_MAX = 0.05, 0.5
ALPHA_INIT = 0.3  # Table 2: residual fusion alpha


FUSIONS = ("residual", "concat")  # ResidualGatedFusion (the paper's), ConcatFusion (Table 4's w/o residual fusion)


@dataclass
class FusionOutput:
    logits: Tensor  # z (B, C)
    gate: Tensor | None = None  # g (B, 1); the residual fusion's terms, None for ConcatFusion
    s_cos: Tensor | None = None  # (B, 1)
    s_conf: Tensor | None = None  # (B, 1)
    delta: Tensor | None = None  # residual correction logits (B, C)


def gate_value(gate_layer: nn.Linear, h_t: Tensor, h_v_proj: Tensor) -> Tensor:
    """Eq. g = sigma(W_g [h_t || h~_v || h_t - h~_v || h_t (.) h~_v]) clamped to [0.05, 0.5], shape (B, 1)."""
    features = torch.cat([h_t, h_v_proj, h_t - h_v_proj, h_t * h_v_proj], dim=-1)
    return torch.sigmoid(gate_layer(features)).clamp(GATE_MIN, GATE_MAX)


def fused_embedding(h_t: Tensor, h_v_proj: Tensor, gate: Tensor) -> Tensor:
    """Reading of h_fused: the gated mix (1 - g) h_t + g h~_v."""
    return (1 - gate) * h_t + gate * h_v_proj


def cosine_scale(h_t: Tensor, h_v_proj: Tensor) -> Tensor:
    """Reading of s_cos: (1 + cos(h_t, h~_v)) / 2, in [0, 1], shape (B, 1)."""
    return ((1 + F.cosine_similarity(h_t, h_v_proj, dim=-1)) / 2).unsqueeze(-1)


def confidence_scale(visual_logits: Tensor) -> Tensor:
    """Reading of s_conf: max softmax probability of the visual logits, detached, shape (B, 1)."""
    return F.softmax(visual_logits.detach(), dim=-1).max(-1, keepdim=True).values


class ResidualGatedFusion(nn.Module):
    def __init__(
        self,
        text_dim: int,
        visual_dim: int,
        num_labels: int,
        dropout: float = 0.2,
        alpha_init: float = ALPHA_INIT,
    ):
        super().__init__()
        self.visual_norm = nn.LayerNorm(visual_dim)
        self.w1 = nn.Linear(visual_dim, text_dim)
        self.w2 = nn.Linear(text_dim, text_dim)
        self.w_gate = nn.Linear(4 * text_dim, 1)
        self.residual_norm = nn.LayerNorm(text_dim)
        self.dropout = nn.Dropout(dropout)
        self.w_c = nn.Linear(text_dim, num_labels)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def project_visual(self, h_v: Tensor) -> Tensor:
        """Eq. h~_v = W2 ReLU(W1 LN(h_v))."""
        return self.w2(F.relu(self.w1(self.visual_norm(h_v))))

    def correction(self, h_fused: Tensor, h_t: Tensor) -> Tensor:
        """Eq. delta = W_c Dropout(LN(h_fused - h_t))."""
        return self.w_c(self.dropout(self.residual_norm(h_fused - h_t)))

    def forward(
        self,
        h_t: Tensor,
        text_logits: Tensor,
        h_v: Tensor,
        visual_logits: Tensor,
        has_visual: Tensor | None = None,
    ) -> FusionOutput:
        """Eq. z = z_t + alpha g s_cos s_conf delta; rows with has_visual == False get z = z_t exactly."""
        h_v_proj = self.project_visual(h_v)
        gate = gate_value(self.w_gate, h_t, h_v_proj)
        s_cos = cosine_scale(h_t, h_v_proj)
        s_conf = confidence_scale(visual_logits)
        delta = self.correction(fused_embedding(h_t, h_v_proj, gate), h_t)
        step = self.alpha * gate * s_cos * s_conf * delta
        if has_visual is not None:
            step = torch.where(has_visual.view(-1, 1).bool(), step, torch.zeros_like(step))
        return FusionOutput(text_logits + step, gate, s_cos, s_conf, delta)


class ConcatFusion(nn.Module):
    """Table 4's "w/o Residual Fusion": z = W Dropout([h_t || h_v]), one linear classifier on the concatenated
    text and visual states, trained on the frozen branches as the residual fusion is. A sample without a caption
    gets z = z_t exactly, as with the residual fusion, so that the two rows differ only in how a caption is used."""

    def __init__(self, text_dim: int, visual_dim: int, num_labels: int, dropout: float = 0.2):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(text_dim + visual_dim, num_labels)

    def forward(self, h_t: Tensor, text_logits: Tensor, h_v: Tensor, visual_logits: Tensor,
                has_visual: Tensor | None = None) -> FusionOutput:
        logits = self.classifier(self.dropout(torch.cat([h_t, h_v], dim=-1)))
        if has_visual is not None:
            logits = torch.where(has_visual.view(-1, 1).bool(), logits, text_logits)
        return FusionOutput(logits)


def make_fusion(kind: str, text_dim: int, visual_dim: int, num_labels: int, dropout: float = 0.2,
                alpha_init: float = ALPHA_INIT) -> nn.Module:
    """The fusion module a model config names: "residual" (Section 3.6) or "concat" (the Table 4 ablation)."""
    if kind == "residual":
        return ResidualGatedFusion(text_dim, visual_dim, num_labels, dropout, alpha_init)
    if kind == "concat":
        return ConcatFusion(text_dim, visual_dim, num_labels, dropout)
    raise ValueError(f"fusion must be one of {FUSIONS}, got {kind!r}")
