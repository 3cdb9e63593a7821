"""Captions for the visual branch: a JSONL cache keyed by split/dialogue/utterance + captioner id, and
their Sentence-BERT embeddings (cached as safetensors).

Without MELD videos or Qwen2.5-VL weights there are no real captions: ``caption_source: none`` makes
the run text-only and every report says so.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ddvlm_core.assets import resolve_model
from ddvlm_core.captioner import filter_emotion_words


def read_captions(path: str | Path) -> dict[str, dict]:
    """key -> record; a later line for the same key wins (resumed runs append). Bad lines are errors."""
    records = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                records[rec["key"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a caption record ({e})") from None
    return records


def caption_embeddings(cfg, data, log=print) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per split: (N, d) embeddings (zeros where no caption) and an (N,) bool mask of captioned examples."""
    from ddvlm_core.visual import CaptionEmbedder

    records = read_captions(cfg.caption_source)
    embedder = CaptionEmbedder(resolve_model(cfg.caption_embedder), cfg.device)
    emb, has = {}, {}
    for split, examples in data.items():
        texts = [filter_emotion_words(records.get(e.key, {}).get("caption", "")).text for e in examples]
        digest = hashlib.sha256(json.dumps([cfg.caption_embedder, texts]).encode()).hexdigest()[:16]
        cache = Path(cfg.feature_cache) / f"captions-{split}-{digest}.safetensors"
        if cache.is_file():
            emb[split] = load_file(cache)["embedding"]
        else:
            emb[split] = torch.zeros((len(texts), embedder.dim))
            idx = [i for i, t in enumerate(texts) if t]
            if idx:
                emb[split][idx] = embedder.embed([texts[i] for i in idx])
            cache.parent.mkdir(parents=True, exist_ok=True)
            save_file({"embedding": emb[split].contiguous()}, cache)
        has[split] = torch.tensor([bool(t) for t in texts])
        log(f"captions {split}: {int(has[split].sum())}/{len(texts)} examples have a usable caption")
    return emb, has
