"""What frozen layers compute, extracted once per split and cached (safetensors):

- frozen-backbone mode: the mask-token states h_text;
- LoRA on the top layers (``cache_frozen_layers``): every token's hidden state entering the lowest adapted
  layer, so that training runs only the layers above it.

The cache key hashes the backbone's weights file and every prompt's token ids (and the layer), so a
different backbone, tokenizer, prompt format or MELD subset never reuses stale features.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ddvlm_core.text import layers_only, mask_positions
from training.data import Example, batches, collate


def prompts_digest(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for e in examples:
        digest.update(e.key.encode())
        digest.update(bytes(str(e.input_ids), "ascii"))
    return digest.hexdigest()[:16]


SAMPLE_BYTES = 1 << 20  # of a weights file hashed at its start, middle and end


def backbone_digest(backbone_path: str) -> str:
    """sha256 of the backbone's config and tokenizer files and of its weight files' names, sizes and bytes at
    their start, middle and end (fast: 3 MiB of a 438 MB file; a fine-tune changes every tensor). Names and sizes
    alone made two backbones of one architecture, e.g. a model and its fine-tuned copy in another folder, share
    their cached features."""
    digest = hashlib.sha256()
    for f in sorted(Path(backbone_path).glob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".json"):
            size = f.stat().st_size
            digest.update(f.name.encode())
            digest.update(str(size).encode())
            if f.suffix == ".json":
                digest.update(f.read_bytes())
                continue
            with open(f, "rb") as fh:
                for at in (0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)):
                    fh.seek(at)
                    digest.update(fh.read(SAMPLE_BYTES))
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


@dataclass
class LayerStates:
    """The hidden states entering one encoder layer for every prompt of a split: each prompt's tokens one after
    the other in ``values`` (tokens, H); ``lengths`` and ``mask_index`` (the <mask> position) per prompt."""

    values: torch.Tensor
    lengths: torch.Tensor
    mask_index: torch.Tensor

    def __post_init__(self):
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])

    def batch(self, idx: list[int], instead: LayerStates | None = None,
              use: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(states (B, T, H) right-padded with zeros, attention_mask (B, T), mask_index (B,)) of prompts ``idx``;
        where ``use`` (bool (B,)) holds, prompt ``idx[k]``'s states in ``instead``, the same prompts written
        otherwise (punctuation_dropout: as an ASR without punctuation writes them)."""
        sources = [instead if use is not None and use[k] else self for k in range(len(idx))]
        rows = [src.values[src.offsets[i]:src.offsets[i + 1]] for src, i in zip(sources, idx)]
        states = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        lengths = torch.stack([src.lengths[i] for src, i in zip(sources, idx)])
        mask = (torch.arange(states.shape[1])[None, :] < lengths[:, None]).long()
        return states, mask, torch.stack([src.mask_index[i] for src, i in zip(sources, idx)])


@torch.inference_mode()
def extract_layer_states(text_encoder, examples: list[Example], pad_id: int, layer: int, batch_size: int,
                         device: str, desc: str = "states") -> LayerStates:
    """Run encoder layers below ``layer`` (eval mode: no dropout) and keep every real token's output."""
    text_encoder.eval().to(device)
    lengths = torch.tensor([len(e.input_ids) for e in examples], dtype=torch.long)
    out = LayerStates(torch.empty((int(lengths.sum()), text_encoder.hidden_size)), lengths,
                      torch.empty(len(examples), dtype=torch.long))  # filled below, at out.offsets
    for idx in tqdm(batches(lengths.tolist(), batch_size, shuffle=False, seed=0), desc=desc, unit="batch",
                    mininterval=5):
        ids, mask, _ = collate([examples[i] for i in idx], pad_id)
        out.mask_index[idx] = mask_positions(ids, text_encoder.mask_token_id)
        with layers_only(text_encoder.backbone, 0, layer) as lower:
            states = lower(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.float().cpu()
        for row, i in enumerate(idx):
            out.values[out.offsets[i]:out.offsets[i + 1]] = states[row, :lengths[i]]
    return out


def cached_layer_states(text_encoder, examples: list[Example], pad_id: int, layer: int, cache_dir: str | Path,
                        backbone_path: str, batch_size: int = 32, device: str = "cpu", log=print,
                        adapter: str = "") -> LayerStates:
    """``extract_layer_states``, read from the cache when this backbone, layer and these prompts were seen;
    ``adapter``: the sha256 of a LoRA adapter that the layers below ``layer`` carry (init_checkpoint), '' for none."""
    split = examples[0].split if examples else "empty"
    key = f"{split}-layer{layer}-{backbone_digest(backbone_path)}{'-' + adapter[:16] if adapter else ''}-" \
          f"{prompts_digest(examples)}"
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        return LayerStates(**load_file(path))
    t0 = time.monotonic()
    states = extract_layer_states(text_encoder, examples, pad_id, layer, batch_size, device,
                                  desc=f"layer {layer} states {split}")
    save_atomically({"values": states.values, "lengths": states.lengths, "mask_index": states.mask_index}, path,
                    metadata={"split": split, "layer": str(layer), "n": str(len(examples))})
    log(f"cached {int(states.lengths.sum())} token states of {len(examples)} {split} prompts at layer {layer} in "
        f"{time.monotonic() - t0:.0f}s -> {path}")
    return states
