"""EmotionRecognizer: dialogue context (+ optional caption) -> 7-way emotion distribution.

The one entry point the ROS node, the demo and the evaluators use. Text-only when there is no caption,
when the caption is empty after the emotion-word filter, or when the checkpoint has no trained visual
branch; each of these is stated in ``modalities`` and ``flags``.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Iterable, Sequence

import torch

from ddvlm_core.calibration import describe as describe_calibration
from ddvlm_core.captioner import Caption, filter_emotion_words
from ddvlm_core.context import (REPETITION_LOOP_FLAG, UNPUNCTUATED_FLAG, Dialogue, PromptBuilder, Turn, end_sentence,
                                make_turns, speaker_and_text, unpunctuated)
from ddvlm_core.labels import LABELS
from ddvlm_core.language import NOT_ENGLISH_FLAG, not_english
from ddvlm_core.model import DDVLM, cuda_graph_skips, probabilities
from ddvlm_core.text import bucket_widths, collate_prompts

MODALITY_TEXT, MODALITY_TEXT_VISUAL = "text", "text+visual"


@dataclass(frozen=True)
class EmotionPrediction:
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]  # final distribution, sums to 1
    text_probabilities: tuple[float, ...]  # the text branch alone
    top_label: str
    confidence: float
    modalities: str  # "text" or "text+visual"
    speaker_token: str
    caption: str
    caption_source: str
    flags: tuple[str, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def _characters(dialogue_context) -> int:
    """How many characters the texts of a dialogue context hold, as given (``predict_many``'s batching order)."""
    items = dialogue_context.turns if isinstance(dialogue_context, Dialogue) else dialogue_context
    return sum(len(t.text) if isinstance(t, Turn) else len(speaker_and_text(t)[1]) for t in items)


def as_turns(dialogue_context) -> list[Turn]:
    """Accepts a Dialogue, a list of Turns, or a list of (speaker, text) pairs; the last is predicted."""
    if isinstance(dialogue_context, (str, bytes)):  # list("hi") would be a dialogue of two turns, "h" and "i"
        raise TypeError("a dialogue context is a list of utterances, not one text: pass [text] or "
                        "[(speaker, text)]")
    if isinstance(dialogue_context, Dialogue):
        turns = list(dialogue_context.turns)
    else:
        items = list(dialogue_context)
        turns = items if all(isinstance(t, Turn) for t in items) else make_turns(items)
    if not turns:
        raise ValueError("empty dialogue: nothing to predict")
    return turns


class EmotionRecognizer:
    def __init__(self, model: DDVLM, tokenizer, caption_embedder=None, device: str = "cpu",
                 has_visual_branch: bool = False, name: str = "ddvlm"):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.prompts = PromptBuilder(tokenizer, model.config.max_tokens, model.config.speaker_tokens)
        self.caption_embedder = caption_embedder
        self.device = device
        self.has_visual_branch = has_visual_branch
        self.name = name
        self.trained_captioner = ""  # the captioner id whose captions trained the visual branch ("" unknown)
        self.cuda_graph_skips: list[str] = []  # why the last warm_up ran compiled graphs without CUDA graphs
        self.calibration = describe_calibration(model.config, None)  # what the confidence is (diagnostics)
        # prompts end each turn that has no punctuation with a full stop (an ASR that does not punctuate: end_sentence)
        self.end_unpunctuated_turns = False

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, device: str = "cpu", load_caption_embedder: bool = True,
                        backbone_path: str | None = None) -> "EmotionRecognizer":
        model, tokenizer, manifest = DDVLM.load(directory, backbone_path)
        visual = {"visual_head", "fusion"} <= set(manifest["modules"])
        embedder = None
        if visual and load_caption_embedder:
            from ddvlm_core.assets import resolve_model
            from ddvlm_core.visual import CaptionEmbedder

            embedder = CaptionEmbedder(resolve_model(model.config.caption_embedder), device)
        recognizer = cls(model, tokenizer, embedder, device, visual, name=os.path.basename(os.path.normpath(directory)))
        recognizer.trained_captioner = manifest.get("captioner", "")  # written by training.loop (training.captions)
        recognizer.calibration = describe_calibration(model.config, manifest.get("calibration"))
        return recognizer

    def captioner_check(self, captioner) -> str:
        """Whether ``captioner`` is the kind whose captions trained the visual branch: "matches training" (with
        a note when its frames per window differ), "differs from training (<id>)" (its visual scores then come
        from captions unlike those it learned from, e.g. the OpenCV fallback's on a head trained on
        Qwen2.5-VL's), or "training captioner unknown"."""
        if not self.trained_captioner:
            return "training captioner unknown"
        if self.trained_captioner.split(":", 1)[0] != getattr(captioner, "name", None):
            return f"differs from training ({self.trained_captioner})"
        trained = re.search(r"frames=(\d+)", self.trained_captioner)
        frames = getattr(captioner, "frames_per_window", None)
        if trained and frames is not None and int(trained[1]) != frames:
            return f"matches training, but {frames} frames per window where training used {trained[1]}"
        return "matches training"

    def warm_up(self) -> float:
        """Seconds spent on one prediction of one and of two dialogues (a compiled model compiles for single
        prompts and for batches now rather than at the first utterances) and, when prompts are padded to
        length buckets (CUDA graphs), on two single-prompt calls per bucket width: the first call of a shape
        runs it, the second records its CUDA graph. The reasons torch gives for not recording CUDA graphs, if
        any, are kept in ``cuda_graph_skips`` (``ddvlm_core.model.cuda_graph_note`` words them)."""
        start = time.perf_counter()
        with cuda_graph_skips() as self.cuda_graph_skips:
            self.predict_batch([[("s1", "Hello there.")]])
            self.predict_batch([[("s1", "Hello there.")], [("s1", "Hi!"), ("s2", "How are you doing today?")]])
            if self.model.text.length_bucket:
                with torch.inference_mode():
                    for width in bucket_widths(*self.model.text.length_bucket):
                        ids = torch.full((1, width), self.tokenizer.mask_token_id, device=self.device)
                        for _ in range(2):
                            self.model.text(ids, torch.ones_like(ids))
        return time.perf_counter() - start

    def predict(self, dialogue_context, caption: str | Caption | None = None) -> EmotionPrediction:
        """Distribution for the last utterance of ``dialogue_context``, using only it and earlier ones."""
        return self.predict_batch([dialogue_context], [caption])[0]

    def predict_many(self, contexts: Sequence, batch_size: int = 16, desc: str = "") -> list[EmotionPrediction]:
        """``predict_batch`` over many dialogue contexts (a whole split), in batches of contexts of similar length
        (less padding): one prediction per context, in order. With ``desc``, a progress bar, erased when done."""
        from tqdm import tqdm

        contexts = list(contexts)
        order = sorted(range(len(contexts)), key=lambda i: _characters(contexts[i]))
        out: list = [None] * len(contexts)
        for start in tqdm(range(0, len(order), batch_size), desc=desc or None, unit="batch", mininterval=10,
                          leave=False):
            idx = order[start:start + batch_size]
            for i, prediction in zip(idx, self.predict_batch([contexts[i] for i in idx])):
                out[i] = prediction
        return out

    @torch.inference_mode()
    def predict_batch(self, contexts: Sequence, captions: Iterable[str | Caption | None] | None = None):
        """``predict`` for several dialogue contexts in one forward pass: one prediction per context, in order
        ([] for none); ``captions`` has one caption (or None) per context."""
        contexts = list(contexts)
        captions = list(captions) if captions is not None else [None] * len(contexts)
        if len(captions) != len(contexts):
            raise ValueError("one caption (or None) per dialogue context")
        if not contexts:
            return []
        turns = [as_turns(c) for c in contexts]
        prompts = [self.prompts.build(self.prompt_turns(t)) for t in turns]
        ids, mask = collate_prompts([p.input_ids for p in prompts], self.tokenizer.pad_token_id)
        text = self.model.text(ids.to(self.device), mask.to(self.device))
        cap_texts, sources, flags = zip(*(self._caption(c) for c in captions))
        use = torch.tensor([bool(t) for t in cap_texts], device=self.device)
        logits = text.logits
        if bool(use.any()):
            emb = self.caption_embedder.embed([t or "." for t in cap_texts]).to(self.device)
            logits = self.model.forward_features(text.hidden, emb, use).logits
        config = self.model.config
        plain = [unpunctuated(t[-1].text) for t in turns]  # flagged transcript-unpunctuated
        text_t = torch.tensor([config.unpunctuated_temperature if p and config.unpunctuated_temperature
                               else config.text_temperature for p in plain], device=self.device)
        temperature = torch.where(use, config.fused_temperature, text_t).unsqueeze(1)  # per row, by what scored it
        probs = probabilities(logits, temperature).cpu()
        text_probs = probabilities(text.logits, text_t.unsqueeze(1)).cpu()
        out = []
        for i, prompt in enumerate(prompts):
            f = flags[i] + (("context-truncated",) if prompt.n_turns_dropped else ()) \
                + (("current-utterance-truncated",) if prompt.truncated_current else ()) \
                + ((UNPUNCTUATED_FLAG,) if plain[i] else ()) \
                + ((NOT_ENGLISH_FLAG,) if not_english(turns[i][-1].text, turns[i][-1].language) else ()) \
                + ((REPETITION_LOOP_FLAG,) if turns[i][-1].repeats_cut else ())
            top = int(probs[i].argmax())
            out.append(EmotionPrediction(
                LABELS, tuple(probs[i].tolist()), tuple(text_probs[i].tolist()), LABELS[top],
                float(probs[i, top]), MODALITY_TEXT_VISUAL if bool(use[i]) else MODALITY_TEXT,
                prompt.speaker_token, cap_texts[i], sources[i], f))
        return out

    def prompt_turns(self, turns: list[Turn]) -> list[Turn]:
        """The turns as the prompt writes them: as given, or with ``end_unpunctuated_turns`` each turn without
        punctuation ended with a full stop (``end_sentence``). The flags read the turns as given."""
        if not self.end_unpunctuated_turns:
            return turns
        return [replace(t, text=end_sentence(t.text)) for t in turns]

    def _caption(self, caption: str | Caption | None) -> tuple[str, str, tuple[str, ...]]:
        """(usable caption text or "", source, flags)."""
        if caption is None:
            return "", "", ()
        if isinstance(caption, Caption):
            text, source, flags = filter_emotion_words(caption.text).text, caption.source, tuple(caption.flags)
        elif isinstance(caption, str):
            text, source, flags = filter_emotion_words(caption).text, "external", ()
        else:
            raise TypeError(f"caption must be str, Caption or None, got {type(caption).__name__}")
        if not text:
            return "", source, flags + ("caption-empty-after-filter",)
        if not self.has_visual_branch or self.caption_embedder is None:
            return "", source, flags + ("no-visual-branch",)
        return text, source, flags
