"""Losses of DDVLM (paper Sections 3.4-3.5, hyper-parameters of Table 2).

Each function implements one equation and names it. Readings where the paper is silent follow
``shared/notes/paper-readings.md`` and are repeated in the docstrings.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SD_ALPHA, SD_TAU, EMA_DECAY = 0.7, 2.0, 0.99  # Table 2: self-distillation
RESPONSE_TAU = 4.0  # Table 2: temperature of L_response
FEATURE_TAU, LAMBDA_JSD = 1.0, 0.2  # Table 2: temperature and lambda_JSD of L_feature
VISUAL_ALPHA, VISUAL_BETA = 1.0, 1.0  # Table 2: weights of L_response and L_feature in L_visual
CORR_EPS = 1e-8


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """L_cls(z, y): cross-entropy between logits z (B, C) and gold labels y (B,), batch mean."""
    return F.cross_entropy(logits, labels)


def kl_divergence(target_log_probs: Tensor, input_log_probs: Tensor) -> Tensor:
    """KL(P || Q) = sum_c P_c (log P_c - log Q_c) per row, then the batch mean.

    ``target_log_probs`` is log P (the distribution the expectation is over), ``input_log_probs`` log Q.
    """
    return (target_log_probs.exp() * (target_log_probs - input_log_probs)).sum(-1).mean()


def distillation_kl(teacher_logits: Tensor, student_logits: Tensor, tau: float = SD_TAU) -> Tensor:
    """Eq. L_KD = tau^2 KL(p_t^tau || p_s^tau), p^tau = softmax(z / tau) (Section 3.4).

    The teacher distribution is the target (no gradient flows into it).
    """
    log_p_t = F.log_softmax(teacher_logits.detach() / tau, dim=-1)
    log_p_s = F.log_softmax(student_logits / tau, dim=-1)
    return tau**2 * kl_divergence(log_p_t, log_p_s)


def self_distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    epoch: int,
    alpha: float = SD_ALPHA,
    tau: float = SD_TAU,
) -> Tensor:
    """Eq. L_student^self = alpha L_cls(z_s, y) + (1 - alpha) L_KD (Section 3.4).

    ``epoch`` is 1-based: epoch 1 uses the cross-entropy alone (the EMA teacher is not yet stable);
    from epoch 2 the KL to the EMA teacher is added with alpha = 0.7, tau = 2.
    """
    ce = classification_loss(student_logits, labels)
    if epoch <= 1 or teacher_logits is None:
        return ce
    return alpha * ce + (1 - alpha) * distillation_kl(teacher_logits, student_logits, tau)


class EMATeacher:
    """EMA teacher of Section 3.4: a copy of the student at step 0, then after every step
    theta_EMA(t) = lambda theta_EMA(t-1) + (1 - lambda) theta_student(t), lambda = 0.99.

    Parameters are averaged; buffers (e.g. position ids) are copied; the teacher stays in eval mode
    (no dropout) and never receives gradients.
    """

    def __init__(self, student: nn.Module, decay: float = EMA_DECAY):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(student).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        ema_update_(self.model, student, self.decay)

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """In place: theta_t <- decay * theta_t + (1 - decay) * theta_s for parameters; buffers copied.

    Frozen student parameters (``requires_grad`` False, e.g. a LoRA backbone's base weights) never change,
    so their teacher copy already equals them and is left alone; the rest is updated with fused
    multi-tensor ops (one kernel launch per op for all tensors, not one per tensor).
    """
    pairs = [(p_t, p_s.detach()) for p_t, p_s in zip(teacher.parameters(), student.parameters(), strict=True)
             if p_s.requires_grad]
    if pairs:
        t, s = zip(*pairs)
        torch._foreach_mul_(t, decay)
        torch._foreach_add_(t, s, alpha=1 - decay)
    for b_t, b_s in zip(teacher.buffers(), student.buffers(), strict=True):
        b_t.copy_(b_s)


def pearson_correlation(a: Tensor, b: Tensor, dim: int = -1, eps: float = CORR_EPS) -> Tensor:
    """corr(a, b) along ``dim``: cov / (std_a std_b + eps). A constant vector gives 0, never NaN."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    cov = (a * b).sum(dim)
    return cov / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def inter_class_loss(y_teacher: Tensor, y_student: Tensor) -> Tensor:
    """Eq. L_inter = 1 - (1/N) sum_i corr(y_t[i, :], y_s[i, :]): per-sample correlation over classes."""
    return 1 - pearson_correlation(y_teacher, y_student, dim=1).mean()


def intra_class_loss(y_teacher: Tensor, y_student: Tensor) -> Tensor:
    """Eq. L_intra = 1 - (1/C) sum_j corr(y_t[:, j], y_s[:, j]): per-class correlation over the batch."""
    return 1 - pearson_correlation(y_teacher, y_student, dim=0).mean()


def response_loss(teacher_logits: Tensor, student_logits: Tensor, tau: float = RESPONSE_TAU) -> Tensor:
    """Eq. L_response = tau^2 (L_inter + L_intra), y = softmax(z / tau), tau = 4 (Section 3.5)."""
    y_t = F.softmax(teacher_logits.detach() / tau, dim=-1)
    y_s = F.softmax(student_logits / tau, dim=-1)
    return tau**2 * (inter_class_loss(y_t, y_s) + intra_class_loss(y_t, y_s))


def js_divergence(p: Tensor, q: Tensor, eps: float = 1e-12) -> Tensor:
    """JSD(p, q) = KL(p || m)/2 + KL(q || m)/2, m = (p + q)/2, natural log, row-wise then batch mean."""
    log_m = ((p + q) / 2).clamp_min(eps).log()
    return 0.5 * kl_divergence(p.clamp_min(eps).log(), log_m) + 0.5 * kl_divergence(q.clamp_min(eps).log(), log_m)


def relational_distributions(h_teacher: Tensor, h_student: Tensor, tau: float = FEATURE_TAU) -> tuple[Tensor, Tensor]:
    """Eq. H~ = normalize(H); p = softmax(H~t H~t^T / tau), q = softmax(H~t H~s^T / tau), row-wise."""
    ht = F.normalize(h_teacher.detach(), dim=-1)
    hs = F.normalize(h_student, dim=-1)
    return F.softmax(ht @ ht.T / tau, dim=-1), F.softmax(ht @ hs.T / tau, dim=-1)


def feature_loss(
    h_teacher: Tensor, h_student: Tensor, tau: float = FEATURE_TAU, lambda_jsd: float = LAMBDA_JSD
) -> Tensor:
    """Eq. L_feature = KL(q || p) + lambda_JSD JSD(p, q), tau = 1, lambda_JSD = 0.2 (Section 3.5).

    p is the teacher-teacher and q the teacher-student relational distribution of the batch; the KL is
    taken with q as the target of the expectation, exactly as written: sum q (log q - log p).
    """
    p, q = relational_distributions(h_teacher, h_student, tau)
    eps = 1e-12
    return kl_divergence(q.clamp_min(eps).log(), p.clamp_min(eps).log()) + lambda_jsd * js_divergence(p, q)


def visual_student_loss(
    student_logits: Tensor,
    labels: Tensor,
    teacher_logits: Tensor,
    h_teacher: Tensor,
    h_student: Tensor,
    alpha: float = VISUAL_ALPHA,
    beta: float = VISUAL_BETA,
    response_tau: float = RESPONSE_TAU,
    feature_tau: float = FEATURE_TAU,
    lambda_jsd: float = LAMBDA_JSD,
) -> Tensor:
    """Eq. L_student^visual = L_cls + alpha L_response + beta L_feature, alpha = beta = 1 (Section 3.5).

    The teacher is the trained text branch, frozen: its logits and mask-token states carry no gradient.
    """
    return (
        classification_loss(student_logits, labels)
        + alpha * response_loss(teacher_logits, student_logits, response_tau)
        + beta * feature_loss(h_teacher, h_student, feature_tau, lambda_jsd)
    )
