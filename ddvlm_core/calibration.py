"""Calibrated confidence: temperature scaling of the output distribution (Guo et al., 2017, "On Calibration of
Modern Neural Networks", Section 4.2). Not part of the DDVLM paper, which reports argmax metrics only; a robot's
behaviour node thresholds ``confidence`` (e.g. "react when P(anger) > 0.6"), and that needs probabilities that
mean what they say.

    p = softmax(z / T)                                   one temperature T > 0 for every class and input
    T* = argmin_T  NLL(T) = mean_i [ log sum_c exp(z_ic / T) - z_iy_i / T ]       fitted on dev, never on test
    ECE = sum_b (|B_b| / n) |acc(B_b) - conf(B_b)|       B_b: the inputs whose confidence max_c p_c falls in
                                                         the b-th of n_bins equal-width bins of (0, 1]

T changes no argmax, so WA-F1, accuracy and every confusion count stay exactly as they were; only the
probabilities and the confidence move. NLL is convex in beta = 1/T (a log-sum-exp of functions linear in beta
minus a linear term), so a golden-section search on beta finds its one minimum; no optimiser state, and the
same T for the same logits on every machine.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

T_MIN, T_MAX = 0.05, 20.0  # the search range of T
ECE_BINS = 15  # Guo et al.'s reliability diagrams


def nll(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / temperature), in nats."""
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(logits: Tensor, labels: Tensor, t_min: float = T_MIN, t_max: float = T_MAX,
                    tol: float = 1e-7) -> float:
    """T* minimising ``nll(logits, labels, T)`` over [t_min, t_max]: golden-section search on beta = 1/T.

    Raises ValueError for no examples, for logits and labels of different lengths, or for non-finite logits."""
    logits, labels = logits.detach().double().cpu(), labels.detach().long().cpu()
    if logits.ndim != 2 or len(logits) == 0 or len(logits) != len(labels):
        raise ValueError(f"fit_temperature needs (N, C) logits and N labels, N >= 1; got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("fit_temperature: the logits hold NaN or inf")

    def loss(beta: float) -> float:
        return float(F.cross_entropy(logits * beta, labels))

    lo, hi = 1.0 / t_max, 1.0 / t_min
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    loss_a, loss_b = loss(a), loss(b)
    while hi - lo > tol:
        if loss_a < loss_b:
            hi, b, loss_b = b, a, loss_a
            a = hi - ratio * (hi - lo)
            loss_a = loss(a)
        else:
            lo, a, loss_a = a, b, loss_b
            b = lo + ratio * (hi - lo)
            loss_b = loss(b)
    return 1.0 / ((lo + hi) / 2)


def confidence_bins(probabilities: Tensor, labels: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """(confidence max_c p_c, 1.0 where the argmax is right, bin index) of every input: equal-width bins of the
    confidence on (0, 1], each closed on the right (a confidence of exactly k / n_bins falls in the bin that ends
    there, as in Guo et al.'s code)."""
    probabilities, labels = probabilities.detach().double().cpu(), labels.detach().long().cpu()
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == labels).double()
    return confidence, correct, torch.clamp(torch.ceil(confidence * n_bins).long() - 1, 0, n_bins - 1)


def expected_calibration_error(probabilities: Tensor, labels: Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE in percent: the bin-weighted mean gap between accuracy and mean confidence (``confidence_bins``)."""
    confidence, correct, bins = confidence_bins(probabilities, labels, n_bins)
    total = 0.0
    for b in range(n_bins):
        members = bins == b
        if bool(members.any()):
            gap = abs(float(correct[members].mean()) - float(confidence[members].mean()))
            total += float(members.double().mean()) * gap
    return 100.0 * total


def reliability(probabilities: Tensor, labels: Tensor, n_bins: int = 5) -> list[dict]:
    """Per confidence bin: its range, how many inputs fell in it, their mean confidence and their accuracy (%):
    the table a behaviour designer reads to pick a threshold."""
    confidence, correct, bins = confidence_bins(probabilities, labels, n_bins)
    rows = []
    for b in range(n_bins):
        members = bins == b
        n = int(members.sum())
        rows.append({"from": b / n_bins, "to": (b + 1) / n_bins, "n": n,
                     "confidence": 100 * float(confidence[members].mean()) if n else None,
                     "accuracy": 100 * float(correct[members].mean()) if n else None})
    return rows


COVERAGE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def coverage(probabilities: Tensor, labels: Tensor, thresholds=COVERAGE_THRESHOLDS) -> list[dict]:
    """``coverage_of`` the answers' confidence (max_c p_c) and whether each is right."""
    confidence, correct, _ = confidence_bins(probabilities, labels, 1)
    return coverage_of(confidence.tolist(), correct.bool().tolist(), thresholds)


def coverage_of(confidence: list[float], correct: list[bool], thresholds=COVERAGE_THRESHOLDS) -> list[dict]:
    """Per confidence threshold t: how many answers have a confidence of t or more (n, and % of all) and how often
    those are right (%; None when none): what a behaviour that acts only on such answers keeps, and how far it can
    trust them."""
    rows = []
    for t in thresholds:
        kept = [ok for c, ok in zip(confidence, correct) if c >= t]
        rows.append({"threshold": t, "n": len(kept), "share": 100 * len(kept) / len(confidence) if confidence else 0.0,
                     "accuracy": 100 * sum(kept) / len(kept) if kept else None})
    return rows


def coverage_table(rows: list[dict]) -> list[str]:
    """``coverage_of``'s rows as Markdown table lines."""
    return ["| act on answers of confidence at least | answers kept | right |", "|---|---|---|"] + [
        f"| {r['threshold']:.1f} | {r['share']:.1f} % ({r['n']}) | "
        + (f"{r['accuracy']:.1f} % |" if r["accuracy"] is not None else "— |") for r in rows]


def calibration_metrics(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> dict:
    """NLL, ECE (%), Brier score and mean confidence (%) of softmax(logits / temperature)."""
    probabilities = F.softmax(logits.detach().double().cpu() / temperature, dim=-1)
    labels = labels.detach().long().cpu()
    onehot = F.one_hot(labels, probabilities.shape[-1]).double()
    return {"temperature": temperature,
            "nll": nll(logits, labels, temperature),
            "ece": expected_calibration_error(probabilities, labels),
            "brier": float(((probabilities - onehot) ** 2).sum(-1).mean()),
            "mean_confidence": 100 * float(probabilities.max(-1).values.mean()),
            "accuracy": 100 * float((probabilities.argmax(-1) == labels).double().mean()),
            "reliability": reliability(probabilities, labels), "coverage": coverage(probabilities, labels)}


def published_calibration(probabilities, labels) -> dict:
    """``calibration_metrics`` of probabilities as they were published (an /emotion answer's), not of logits: their
    log is a logit vector whose softmax they are (a probability of 0 is taken as 1e-12)."""
    probabilities = torch.as_tensor(probabilities, dtype=torch.float64)
    return calibration_metrics(probabilities.clamp_min(1e-12).log(), torch.as_tensor(labels))


def before_after(logits: Tensor, labels: Tensor, temperature: float, before: float = 1.0,
                 keys: tuple[str, ...] | None = None) -> dict:
    """{"n", "as_trained": metrics at T = 1, ["text_temperature": at ``before`` when it is not 1,] "calibrated":
    at ``temperature``} of one split (only "n" when it has no example); ``keys``: the metrics kept (default all)."""
    if len(labels) == 0:
        return {"n": 0}
    kinds = [("as_trained", 1.0)] + ([("text_temperature", before)] if before != 1.0 else [])
    out = {"n": len(labels)}
    for name, t in kinds + [("calibrated", temperature)]:
        m = calibration_metrics(logits, labels, t)
        out[name] = {k: m[k] for k in keys} if keys else m
    return out


def manifest_entry(temperatures: dict[str, float], **more) -> dict:
    """The checkpoint manifest's ``calibration`` entry: what was fitted on what, and the temperatures."""
    return {"method": "temperature scaling (ddvlm_core.calibration)", "fitted_on": "MELD dev", **more,
            **temperatures}


def describe(config, entry: dict | None) -> str:
    """What the answers' confidence is, for logs and /diagnostics: the temperatures a checkpoint's config holds and
    what they were fitted on (its manifest's ``calibration`` entry), or that it is as trained."""
    text, fused, plain = config.text_temperature, config.fused_temperature, config.unpunctuated_temperature
    if text == 1.0 and fused == 1.0 and plain is None:
        return "not calibrated (temperature 1: as trained; python -m training.calibrate fits one)"
    where = f", fitted on {entry['fitted_on']}" if entry and entry.get("fitted_on") else ""
    plain = f", {plain:.3f} (text without punctuation)" if plain is not None else ""
    return f"temperature {text:.3f} (text), {fused:.3f} (fused){plain}{where}"
