"""Frozen-backbone mode: mask-token states h_text extracted once per split and cached (safetensors).

The cache key hashes the backbone's weights file and every prompt's token ids, so a different
backbone, tokenizer, prompt format or MELD subset never reuses stale features.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from training.data import Example, batches, collate


def prompts_digest(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for e in examples:
        digest.update(e.key.encode())
        digest.update(bytes(str(e.input_ids), "ascii"))
    return digest.hexdigest()[:16]


def backbone_digest(backbone_path: str) -> str:
    """sha256 of the backbone's weight files' names and sizes + config (fast; weights never change in place)."""
    digest = hashlib.sha256()
    for f in sorted(Path(backbone_path).glob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".json"):
            digest.update(f.name.encode())
            digest.update(str(f.stat().st_size).encode())
            if f.suffix == ".json":
                digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


@torch.inference_mode()
def extract(text_encoder, examples: list[Example], pad_id: int, batch_size: int, device: str,
            desc: str = "features") -> torch.Tensor:
    """(N, H) float32 h_text for every example, in example order; length-bucketed batches."""
    text_encoder.eval().to(device)
    out = torch.empty((len(examples), text_encoder.hidden_size))
    plan = batches([len(e.input_ids) for e in examples], batch_size, shuffle=False, seed=0)
    for idx in tqdm(plan, desc=desc, unit="batch", mininterval=5):
        ids, mask, _ = collate([examples[i] for i in idx], pad_id)
        out[idx] = text_encoder.encode(ids.to(device), mask.to(device)).float().cpu()
    return out


def save_atomically(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """safetensors to ``path`` through a temporary file and a rename: processes sharing a cache (DDP ranks, the
    parallel seeds of training.ablate) see no file or a whole one, never one being written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)


def cached_features(text_encoder, examples: list[Example], pad_id: int, cache_dir: str | Path, backbone_path: str,
                    batch_size: int = 32, device: str = "cpu", log=print) -> torch.Tensor:
    split = examples[0].split if examples else "empty"
    key = f"{split}-{backbone_digest(backbone_path)}-{prompts_digest(examples)}"
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        return load_file(path)["h_text"]
    t0 = time.monotonic()
    features = extract(text_encoder, examples, pad_id, batch_size, device, desc=f"h_text {split}")
    save_atomically({"h_text": features.contiguous()}, path, metadata={"split": split, "n": str(len(examples))})
    log(f"cached {len(examples)} {split} features in {time.monotonic() - t0:.0f}s -> {path}")
    return features
