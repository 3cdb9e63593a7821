"""Captioners: the frames of an utterance's time window -> a factual description (paper Section 3.3).

- ``QwenVLCaptioner``: Qwen2.5-VL (local weights) with the paper's annotator prompt, greedy decoding.
- ``CueCaptioner``: the offline FALLBACK (OpenCV Haar face/eye/smile cues + frame-difference motion);
  its captions are labelled ``cue-fallback`` wherever they appear. It is not the paper's captioner.

Every caption passes the emotion-word filter (the paper's leakage rule: no emotion words).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

ANNOTATOR_PROMPT = (
    "You are an annotator who concisely describes observable actions and facial states. "
    "Look at the frames of one short video segment in which a person is speaking. "
    "In 2-3 short sentences in the present progressive, describe only what is visible: "
    "the eyes, eyebrows, lips, jaw, head movement and gaze direction, and at least one bodily behavior "
    "(hand movements, posture, or interaction with another person or object). "
    "Do not infer or name any emotion or mood: words such as happy, angry, sad, afraid, surprised or "
    "disgusted are forbidden. Describe observable facts only."
)

# Emotion words removed from every caption (all inflections listed; matched as whole words).
EMOTION_WORDS = frozenset(
    """
    emotion emotions emotional emotionally mood moods moody feeling feelings
    neutral neutrally
    happy happily happiness happier happiest unhappy unhappily unhappiness joy joys joyful joyfully joyous
    glad gladly cheerful cheerfully cheery delighted delight delightful excited excitedly excitement
    elated pleased amused amusement ecstatic thrilled contented
    sad sadly sadness sadder saddest sorrow sorrowful depressed depression gloomy upset miserable
    grief grieving melancholy heartbroken unhappy despair despairing hopeless
    angry angrily anger angered angrier angriest mad furious furiously fury rage raging enraged
    irritated irritation annoyed annoyance frustrated frustration hostile hostility resentful irate
    fear fears fearful fearfully afraid scared frightened frightening terrified terror anxious
    anxiously anxiety nervous nervously worried worry worrying panic panicked panicky alarmed
    surprise surprised surprising surprisingly astonished astonishment amazed amazement shocked shock
    startled stunned
    disgust disgusted disgusting disgustedly revulsion repulsed revolted contempt contemptuous
    calm calmly relaxed bored boredom embarrassed embarrassment ashamed shame guilty proud pride
    jealous jealousy lonely loving hateful hatred
    tense tensely distressed distress distraught agitated agitation apprehensive apprehension uneasy unease
    concerned horrified horror dread displeased displeasure dismayed dismay bitter bitterly irritable
    irritably annoying frustrating upsetting exciting enthusiastic enthusiastically enthusiasm sorrowfully
    cheerfulness joyless fright frightful worriedly resigned resignation defeated
    """.split()
)
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
# Words that describe nothing on their own: a caption made only of these (after filtering) is empty.
_FUNCTION_WORDS = frozenset(
    "a an the and or but so very quite really is are was were be being been he she it they person "
    "looks look looking seems seem seeming appears appear appearing feels feel of to in on with".split()
)


@dataclass(frozen=True)
class FilteredText:
    text: str
    removed: tuple[str, ...]


def filter_emotion_words(text: str) -> FilteredText:
    """Remove emotion words (whole words, any case) and tidy the spaces and punctuation left behind.

    Control and replacement characters are dropped too; text left with no descriptive word (only
    function words such as "and", "looks", "very") becomes "".
    """
    removed: list[str] = []

    def drop(match: re.Match) -> str:
        word = match.group(0)
        if word.lower() in EMOTION_WORDS:
            removed.append(word)
            return ""
        return word

    cleaned = _WORD.sub(drop, "".join(c if c.isprintable() else " " for c in text).replace("\ufffd", " "))
    cleaned = re.sub(r"\s+([,.;:!?])", r"\1", cleaned)
    cleaned = re.sub(r"([,;:])(?=[,.;:!?])", "", cleaned)
    cleaned = re.sub(r"(^|[.!?]\s*)[,;:]\s*", r"\1", cleaned)
    cleaned = " ".join(cleaned.split())
    if all(w.lower() in _FUNCTION_WORDS for w in _WORD.findall(cleaned)):
        cleaned = ""
    return FilteredText(cleaned, tuple(removed))


@dataclass(frozen=True)
class Frame:
    """One camera image (H x W x 3 RGB uint8, or H x W gray) with its time stamp in seconds."""

    stamp: float
    image: np.ndarray


@dataclass(frozen=True)
class Caption:
    text: str  # emotion words removed; "" when nothing usable is left
    source: str  # captioner id, e.g. "qwen2.5-vl" or "cue-fallback"
    n_frames: int
    raw_text: str = ""
    removed_words: tuple[str, ...] = ()
    flags: tuple[str, ...] = field(default_factory=tuple)


@runtime_checkable
class Captioner(Protocol):
    """Frames + time window -> Caption."""

    name: str

    def caption(self, frames: Sequence[Frame], window: tuple[float, float] | None = None) -> Caption: ...


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate a frame: uint8, H x W (gray) or H x W x 3 (RGB), non-empty. Returns it as RGB."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError("a frame must be a uint8 numpy array")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"a frame must be H x W or H x W x 3 with H, W > 0, got shape {image.shape}")
    return image


def select_window_frames(frames: Sequence[Frame], window: tuple[float, float] | None, n: int) -> list[Frame]:
    """Frames with start <= stamp <= end, in time order, n of them sampled uniformly (all if fewer)."""
    inside = sorted((f for f in frames if window is None or window[0] <= f.stamp <= window[1]),
                    key=lambda f: f.stamp)
    return [inside[i] for i in uniform_picks(len(inside), n)]


def uniform_picks(count: int, n: int) -> list[int]:
    """Indices of n of ``count`` items in time order, spread uniformly from the first to the last (all of them
    when there are at most n; n <= 0: all)."""
    if n <= 0 or count <= n:
        return list(range(count))
    return np.linspace(0, count - 1, n).round().astype(int).tolist()


class WindowCaptioner:
    """Shared steps: pick the window's frames, validate them, describe them, filter emotion words."""

    name = "captioner"
    fallback = False

    def __init__(self, frames_per_window: int = 4):
        self.frames_per_window = frames_per_window

    def describe(self, images: list[np.ndarray]) -> str:
        raise NotImplementedError

    def describe_batch(self, image_lists: list[list[np.ndarray]]) -> list[str]:
        """Several windows at once (a captioner that batches on its device overrides this)."""
        return [self.describe(images) for images in image_lists]

    def caption(self, frames: Sequence[Frame], window: tuple[float, float] | None = None) -> Caption:
        return self.caption_batch([frames], [window])[0]

    def caption_batch(self, frame_lists: Sequence[Sequence[Frame]],
                      windows: Sequence[tuple[float, float] | None] | None = None) -> list[Caption]:
        """One caption per (frames, window), the windows with frames described in one ``describe_batch``."""
        windows = list(windows) if windows is not None else [None] * len(frame_lists)
        flags = ("fallback-captioner",) if self.fallback else ()
        picked = [select_window_frames(frames, window, self.frames_per_window)
                  for frames, window in zip(frame_lists, windows, strict=True)]
        described = iter(self.describe_batch([[check_image(f.image) for f in p] for p in picked if p]))
        captions = []
        for p in picked:
            if not p:
                captions.append(Caption("", self.name, 0, flags=flags + ("no-frames-in-window",)))
                continue
            raw = next(described).strip()
            filtered = filter_emotion_words(raw)
            empty = ("caption-empty-after-filter",) if not filtered.text else ()
            captions.append(Caption(filtered.text, self.name, len(p), raw, filtered.removed, flags + empty))
        return captions


class CueCaptioner(WindowCaptioner):
    """FALLBACK captioner: OpenCV Haar cues and frame-difference motion -> short factual sentences.

    Used where no Qwen2.5-VL weights exist. It sees a face's position and size, whether eyes and a
    smile-shaped mouth are detected, head displacement and overall motion; nothing else.
    """

    name = "cue-fallback"
    fallback = True

    def __init__(self, frames_per_window: int = 8):
        import cv2

        super().__init__(frames_per_window)
        self.cv2 = cv2
        root = cv2.data.haarcascades
        self.face = cv2.CascadeClassifier(os.path.join(root, "haarcascade_frontalface_default.xml"))
        self.eyes = cv2.CascadeClassifier(os.path.join(root, "haarcascade_eye.xml"))
        self.smile = cv2.CascadeClassifier(os.path.join(root, "haarcascade_smile.xml"))
        if self.face.empty() or self.eyes.empty() or self.smile.empty():
            raise RuntimeError(f"OpenCV Haar cascades missing under {root} (need opencv-python-headless 4.x)")

    def _face_cues(self, gray: np.ndarray):
        faces = self.face.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        if len(faces) == 0:
            return None
        x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
        upper, lower = gray[y : y + h // 2, x : x + w], gray[y + h // 2 : y + h, x : x + w]
        eyes = self.eyes.detectMultiScale(upper, scaleFactor=1.1, minNeighbors=5)
        smile = self.smile.detectMultiScale(lower, scaleFactor=1.7, minNeighbors=20)
        cx = (x + w / 2) / gray.shape[1]
        return {"cx": cx, "size": w / gray.shape[1], "eyes": len(eyes), "smile": len(smile) > 0}

    def describe(self, images: list[np.ndarray]) -> str:
        grays = [self.cv2.cvtColor(im, self.cv2.COLOR_RGB2GRAY) for im in images]
        cues = [c for c in (self._face_cues(g) for g in grays) if c is not None]
        motion = _motion_level(grays)
        if not cues:
            return f"No face is visible. Movement in the scene is {motion}."
        cx = float(np.mean([c["cx"] for c in cues]))
        where = "on the left of" if cx < 0.4 else "on the right of" if cx > 0.6 else "in the center of"
        parts = [f"A face is visible {where} the frame in {len(cues)} of {len(images)} frames."]
        eyes = np.mean([c["eyes"] >= 1 for c in cues])
        parts.append("The eyes are open and visible." if eyes >= 0.5 else "The eyes are not clearly visible.")
        smiles = np.mean([c["smile"] for c in cues])
        parts.append("The lip corners are pulled up, showing a smile." if smiles >= 0.5
                     else "The mouth shows no smile.")
        if len(cues) >= 2:
            shift = cues[-1]["cx"] - cues[0]["cx"]
            grow = cues[-1]["size"] / max(cues[0]["size"], 1e-6)
            if abs(shift) > 0.05:
                parts.append(f"The head is moving to the {'right' if shift > 0 else 'left'} of the frame.")
            if grow > 1.15:
                parts.append("The person is leaning toward the camera.")
            elif grow < 0.87:
                parts.append("The person is leaning away from the camera.")
        parts.append(f"Body movement is {motion}.")
        return " ".join(parts)


def _motion_level(grays: list[np.ndarray]) -> str:
    """Mean absolute difference of consecutive frames (0-255 scale) as a word."""
    if len(grays) < 2:
        return "unknown (one frame)"
    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()
             for a, b in zip(grays, grays[1:]) if a.shape == b.shape]
    level = float(np.mean(diffs)) if diffs else 0.0
    return "small" if level < 4 else "moderate" if level < 15 else "large"


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def load_qwen_processor(path: str, min_pixels: int, max_pixels: int):
    """Qwen2.5-VL processor from a local dir; without torchvision, an image-only processor.

    transformers 5.x cannot build the Qwen2.5-VL video processor without torchvision, so there the
    processor is built without it and window frames go in as several images.
    """
    from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil

    if torchvision_available():
        return AutoProcessor.from_pretrained(path, min_pixels=min_pixels, max_pixels=max_pixels,
                                             trust_remote_code=False)

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        @classmethod
        def get_attributes(cls):
            return [a for a in super().get_attributes() if a != "video_processor"]

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, min_pixels=min_pixels, max_pixels=max_pixels)
    return ImageOnlyQwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                        chat_template=_chat_template(path, tokenizer))


def _chat_template(path: str, tokenizer) -> str:
    for name in ("chat_template.jinja", "chat_template.json"):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as fh:
                text = fh.read()
            if name.endswith(".json"):
                import json

                text = json.loads(text)
                if not (isinstance(text, dict) and isinstance(text.get("chat_template"), str)):
                    raise ValueError(f"{file}: no 'chat_template' text in it")
                return text["chat_template"]
            return text
    if tokenizer.chat_template is None:
        raise ValueError(f"{path}: no chat template found for the Qwen2.5-VL processor")
    return tokenizer.chat_template


def _model_type(path: str) -> str:
    """config.json's model_type ("" when the file is not a JSON object or has none)."""
    import json

    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError):
        return ""
    return str(config.get("model_type", "")) if isinstance(config, dict) else ""


class QwenVLCaptioner(WindowCaptioner):
    """Qwen2.5-VL captioner (the paper's: Qwen2.5-VL-7B-Instruct) from a local directory.

    The window's frames go in as images, one image block each, followed by the annotator prompt;
    decoding is greedy; only the newly generated tokens are returned.
    """

    name = "qwen2.5-vl"

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        frames_per_window: int = 4,
        max_new_tokens: int = 96,
        min_pixels: int = 56 * 56,
        max_pixels: int = 448 * 448,
        dtype: str | None = None,
        prompt: str = ANNOTATOR_PROMPT,
    ):
        import torch
        from transformers import Qwen2_5_VLForConditionalGeneration

        from ddvlm_core.text import require_safetensors

        super().__init__(frames_per_window)
        path = require_safetensors(path, "Qwen2.5-VL captioner")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"Qwen2.5-VL captioner: {path!r} has no config.json (not a model folder)")
        model_type = _model_type(path)
        if model_type != "qwen2_5_vl":
            raise ValueError(f"Qwen2.5-VL captioner: {path!r} holds a {model_type or 'model of unknown type'}, not "
                             "Qwen2.5-VL (config.json model_type: qwen2_5_vl)")
        if dtype is not None and not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype must be a torch dtype name (e.g. bfloat16, float16, float32), got {dtype!r}")
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt
        self.processor = load_qwen_processor(path, min_pixels, max_pixels)
        torch_dtype = getattr(torch, dtype) if dtype else None
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, trust_remote_code=False, use_safetensors=True, dtype=torch_dtype
        ).to(device).eval()

    def messages(self, n_images: int) -> list[dict]:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": self.prompt}]
        return [{"role": "user", "content": content}]

    def inputs(self, images: list[np.ndarray]):
        return self.batch_inputs([images])

    def batch_inputs(self, image_lists: list[list[np.ndarray]]):
        """Processor inputs for several windows' images as one batch, left-padded: a decoder generates after
        the last position of every row."""
        from PIL import Image

        texts = [self.processor.apply_chat_template(self.messages(len(images)), tokenize=False,
                                                    add_generation_prompt=True) for images in image_lists]
        pil = [Image.fromarray(im) for images in image_lists for im in images]
        tokenizer = self.processor.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            return self.processor(text=texts, images=pil, padding=True, return_tensors="pt").to(self.device)
        finally:
            tokenizer.padding_side = side

    def new_tokens(self, images: list[np.ndarray]):
        """Greedy generation; only the tokens after the prompt."""
        return self.batch_new_tokens([images])[0]

    def batch_new_tokens(self, image_lists: list[list[np.ndarray]]):
        """Greedy generation for a batch of windows: per row, the tokens after the (padded) prompt."""
        import torch

        inputs = self.batch_inputs(image_lists)
        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
        return out[:, inputs["input_ids"].shape[1]:]

    def describe(self, images: list[np.ndarray]) -> str:
        return self.processor.decode(self.new_tokens(images), skip_special_tokens=True)

    def describe_batch(self, image_lists: list[list[np.ndarray]]) -> list[str]:
        if not image_lists:
            return []
        return [self.processor.decode(row, skip_special_tokens=True) for row in self.batch_new_tokens(image_lists)]


def captioner_id(captioner) -> str:
    """Which captioner, weights and settings wrote a caption, e.g. "cue-fallback:frames=4" or
    "qwen2.5-vl:Qwen2.5-VL-7B-Instruct@1a2b3c4d5e6f:frames=4,max_new_tokens=96,pixels=3136-200704,bfloat16,
    prompt=9f8e7d6c" (the hash of the model's config.json, the frames' pixel range, the weights' dtype, the
    prompt's hash): captions of one id are interchangeable, of two ids are not."""
    settings = f"frames={captioner.frames_per_window}"
    if captioner.name != "qwen2.5-vl":
        return f"{captioner.name}:{settings}"
    folder = Path(captioner.model.name_or_path)
    weights = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:12]
    prompt = hashlib.sha256(captioner.prompt.encode()).hexdigest()[:8]
    size = captioner.processor.image_processor.size  # the pixel range frames are resized into
    dtype = str(captioner.model.dtype).removeprefix("torch.")
    return (f"qwen2.5-vl:{folder.name}@{weights}:{settings},max_new_tokens={captioner.max_new_tokens},"
            f"pixels={size.shortest_edge}-{size.longest_edge},{dtype},prompt={prompt}")
