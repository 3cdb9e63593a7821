"""Text branch (paper Section 3.3): masked-LM encoder -> h_text at the <mask> position -> 7-way head.

The backbone is any masked-LM encoder loaded from a local directory with
``AutoModel.from_pretrained(path, trust_remote_code=False, use_safetensors=True)``: RoBERTa (the paper's), or the
embedded default all-mpnet-base-v2 (MPNet). Nothing is downloaded: a path that is not a local directory is refused,
and so are pickled weights (``require_safetensors``).
"""
from __future__ import annotations

import logging
import os
import re
import types
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer

from ddvlm_core.context import N_SPEAKER_TOKENS, add_speaker_tokens
from ddvlm_core.labels import NUM_LABELS


def require_local_dir(path: str | os.PathLike, what: str) -> str:
    """A model path must be an existing local directory: no hub lookups, ever."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: {path!r} is not a local directory (models are never downloaded)")
    return path


PICKLED_WEIGHTS = re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin")  # what transformers and sentence-transformers
# read with torch.load (an unpickler) when a folder has no .safetensors; other .bin files (openvino/) are not


def require_safetensors(path: str | os.PathLike, what: str) -> str:
    """A local model directory whose weights load from safetensors. The model's folder, or a SentenceTransformer
    module's that modules.json lists (e.g. 2_Dense/), with pickled weights (pytorch_model.bin) and no .safetensors
    is refused: transformers or sentence-transformers would unpickle them, and ddvlm never unpickles."""
    path = require_local_dir(path, what)
    for folder in [path] + _module_folders(path):
        files = os.listdir(folder) if os.path.isdir(folder) else []
        pickled = sorted(f for f in files if PICKLED_WEIGHTS.fullmatch(f))
        if pickled and not any(f.endswith(".safetensors") for f in files):
            raise ValueError(f"{what}: {folder!r} holds pickled weights ({', '.join(pickled)}) and no .safetensors; "
                             "ddvlm never unpickles: save the model as safetensors once, where you trust the file "
                             "(from_pretrained(dir).save_pretrained(dir) writes model.safetensors)")
    return path


def _module_folders(path: str) -> list[str]:
    """The module folders a SentenceTransformer directory's modules.json names (none for a plain model)."""
    import json

    try:
        with open(os.path.join(path, "modules.json"), encoding="utf-8") as fh:
            modules = json.load(fh)
    except (OSError, ValueError):
        return []
    return [os.path.join(path, m["path"]) for m in modules if isinstance(m, dict) and m.get("path")]


def load_tokenizer(path: str, n_speakers: int = N_SPEAKER_TOKENS):
    """Tokenizer of a local backbone with the speaker tokens <s0>..<sN> added."""
    tokenizer = AutoTokenizer.from_pretrained(require_local_dir(path, "text backbone"), trust_remote_code=False)
    if n_speakers:
        add_speaker_tokens(tokenizer, n_speakers)
    return tokenizer


def load_backbone(path: str, tokenizer) -> nn.Module:
    """Masked-LM encoder from a local dir, embeddings resized for the speaker tokens (see below). Built without its
    pooler (h_text is the <mask> token's state), so transformers' report of the checkpoint's pooler weights as
    unexpected is dropped (``PoolerOnlyLoadReport``); any other load report is logged as usual."""
    with filter_logs("transformers.modeling_utils", PoolerOnlyLoadReport()):
        backbone = AutoModel.from_pretrained(
            require_safetensors(path, "text backbone"), trust_remote_code=False, use_safetensors=True,
            add_pooling_layer=False,
        )
    init_new_token_embeddings(backbone, tokenizer)
    return backbone


ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")  # the colours transformers puts in its report


class PoolerOnlyLoadReport(logging.Filter):
    """Drops a transformers LOAD REPORT whose every row is a ``pooler.*`` weight marked UNEXPECTED (what building an
    encoder with ``add_pooling_layer=False`` from a checkpoint that has a pooler gives); a report with any other row
    (a missing or mismatched weight, another unexpected one), or in a format it cannot read, passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = ANSI_STYLE.sub("", record.getMessage())
        if "LOAD REPORT" not in text:
            return True
        table = text.split("\n\nNotes:")[0].splitlines()
        rows = [[cell.strip() for cell in line.split("|")] for line in table if "|" in line][1:]  # after the header
        return not (rows and all(len(r) > 1 and r[0].startswith("pooler.") and r[1] == "UNEXPECTED" for r in rows))


@contextmanager
def filter_logs(name: str, log_filter: logging.Filter) -> Iterator[None]:
    """``log_filter`` on the logger ``name`` for the duration of the block only."""
    logger = logging.getLogger(name)
    logger.addFilter(log_filter)
    try:
        yield
    finally:
        logger.removeFilter(log_filter)


def max_prompt_tokens(backbone_config) -> int | None:
    """The longest prompt the backbone's position embeddings can read (None when it does not say). RoBERTa-style
    encoders (RoBERTa, MPNet) number positions from pad_token_id + 1: 514 embeddings read 512 tokens."""
    limit = getattr(backbone_config, "max_position_embeddings", None)
    if limit and getattr(backbone_config, "model_type", "") in ("roberta", "mpnet", "xlm-roberta", "camembert"):
        limit -= (backbone_config.pad_token_id or 0) + 1
    return limit


def check_prompt_fits(max_tokens: int, backbone_config, path: str) -> None:
    """ValueError when prompts of ``max_tokens`` would run past the backbone's position embeddings."""
    limit = max_prompt_tokens(backbone_config)
    if limit is not None and max_tokens > limit:
        raise ValueError(f"max_tokens {max_tokens} is longer than the backbone {path} reads ({limit} tokens)")


def position_bias_on_input_device(encoder: nn.Module, x: Tensor, position_ids: Tensor | None = None,
                                  num_buckets: int = 32) -> Tensor:
    """MPNet's relative attention bias, as transformers' ``MPNetEncoder.compute_position_bias`` computes it
    (same buckets, same embedding, same values), with its position indices made on ``x``'s device.

    Older transformers (5.17, on the lent GPU machine) make them on the CPU and then move the buckets to the
    GPU. Eager code does not notice; CUDA graphs do: a graph that creates a CPU tensor is not recorded, and
    dynamo's ``cudagraphs`` backend then runs it uncaptured ("skipping cudagraphs due to cpu device
    (arange_4)", measured on the H100; reports/quantization_gpu_inductor.md)."""
    bsz, qlen = x.size(0), x.size(1)
    if position_ids is None:
        positions = torch.arange(qlen, dtype=torch.long, device=x.device)
        context_position, memory_position = positions[:, None], positions[None, :]
    else:
        context_position, memory_position = position_ids[:, :, None], position_ids[:, None, :]
    buckets = encoder.relative_position_bucket(memory_position - context_position, num_buckets=num_buckets)
    values = encoder.relative_attention_bias(buckets).movedim(-1, -3)  # ([batch,] heads, q, k)
    values = values if values.dim() == 4 else values.unsqueeze(0)
    return values.expand((bsz, -1, qlen, qlen)).contiguous()


def keep_position_bias_on_device(backbone: nn.Module) -> int:
    """Give every MPNet encoder inside ``backbone`` (a PEFT wrapper included) ``position_bias_on_input_device``
    in place of its own ``compute_position_bias``, so that a compiled backbone creates no CPU tensor and
    can be replayed as CUDA graphs. Weights and outputs are unchanged. Returns how many encoders it changed
    (0 for RoBERTa, whose positions never leave the input's device)."""
    encoders = [m for m in backbone.modules()
                if hasattr(m, "compute_position_bias") and hasattr(m, "relative_attention_bias")
                and hasattr(m, "relative_position_bucket")]
    for encoder in encoders:
        encoder.compute_position_bias = types.MethodType(position_bias_on_input_device, encoder)
    return len(encoders)


@torch.no_grad()
def init_new_token_embeddings(backbone: nn.Module, tokenizer) -> int:
    """Resize the input embeddings to the tokenizer and initialise each added token deterministically.

    An added token (e.g. ``<s3>``) starts as the mean embedding of the pieces the base vocabulary splits
    it into (``<``, ``s``, ``3``, ``>``), so a frozen backbone still sees a meaningful, distinct token
    and the result does not depend on a random seed. Returns how many rows were added.
    """
    emb = backbone.get_input_embeddings()
    n_old = emb.weight.shape[0]
    if len(tokenizer) <= n_old:
        return 0
    backbone.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = backbone.get_input_embeddings().weight
    for token_id in range(n_old, len(tokenizer)):
        name = tokenizer.convert_ids_to_tokens(token_id)
        pieces = [tokenizer.convert_tokens_to_ids(p) for p in _base_pieces(tokenizer, name)]
        pieces = [p for p in pieces if p is not None and p < n_old]
        weight[token_id] = weight[pieces].mean(0) if pieces else weight[:n_old].mean(0)
    return len(tokenizer) - n_old


def _base_pieces(tokenizer, name: str) -> list[str]:
    """How the base vocabulary (without added tokens) splits ``name``: by characters through the model."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = backend.model
        pretok = backend.pre_tokenizer
        words = [w for w, _ in pretok.pre_tokenize_str(name)] if pretok is not None else [name]
        return [t.value for w in words for t in model.tokenize(w)]
    return [c for c in name]


@dataclass
class TextOutput:
    logits: Tensor  # (B, C) text logits z_t
    hidden: Tensor  # (B, H) h_text, the final hidden state at the <mask> position


class TextEncoder(nn.Module):
    """Backbone + linear 7-way head on the mask-token state: z_t = W_t Dropout(h_text) + b_t."""

    def __init__(self, backbone: nn.Module, mask_token_id: int, num_labels: int = NUM_LABELS, dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.mask_token_id = mask_token_id
        self.hidden_size = backbone.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.hidden_size, num_labels)
        self.length_bucket: tuple[int, int] | None = None  # (multiple, max_width): see pad_to_bucket
        self.compiled_batch_sizes: tuple[int, ...] | None = None  # None: all; else other batch sizes run eager

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """h_text: last-layer hidden state at the (last) <mask> token of each row, shape (B, H).

        With ``length_bucket`` set (``DDVLM.compile_text`` in a CUDA-graph mode on a GPU) prompts are padded to
        a few widths before the backbone: a CUDA graph is recorded per shape, and the padding is masked out."""
        index = mask_positions(input_ids, self.mask_token_id)  # checked here, outside a compiled backbone
        if self.length_bucket:
            input_ids, attention_mask = pad_to_bucket(input_ids, attention_mask, *self.length_bucket,
                                                      self.backbone.config.pad_token_id or 0)
            torch.compiler.cudagraph_mark_step_begin()  # the last call's graph outputs are not read again
        eager = self.compiled_batch_sizes is not None and input_ids.shape[0] not in self.compiled_batch_sizes
        with torch.compiler.set_stance("force_eager") if eager else nullcontext():  # force_eager: nothing compiled
            states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return states_at(states, index)

    def encode_from_layer(self, states: Tensor, attention_mask: Tensor, mask_index: Tensor, start: int) -> Tensor:
        """h_text from the hidden states entering encoder layer ``start`` (B, T, H): only layers ``start`` and
        above run. Equal to ``encode`` on the prompts those states came from (``layers_only``), in eval mode;
        in train mode the layers below ``start`` drop nothing out (training.features caches them once)."""
        with layers_only(self.backbone, start):
            states = self.backbone(inputs_embeds=states, attention_mask=attention_mask).last_hidden_state
        return states_at(states, mask_index)

    def classify(self, h_text: Tensor) -> Tensor:
        """z_t from h_text (used directly on cached features in frozen-backbone training)."""
        return self.head(self.dropout(h_text))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextOutput:
        hidden = self.encode(input_ids, attention_mask)
        return TextOutput(self.classify(hidden), hidden)


def states_at(states: Tensor, index: Tensor) -> Tensor:
    """Row ``b``'s hidden state at position ``index[b]``: (B, T, H) -> (B, H)."""
    return states.gather(1, index[:, None, None].expand(-1, 1, states.shape[-1])).squeeze(1)


class _GivenStates(nn.Module):
    """Stands in for a backbone's embeddings inside ``layers_only``: returns the hidden states it is given."""

    def forward(self, input_ids=None, inputs_embeds=None, **_):
        return inputs_embeds


@contextmanager
def layers_only(backbone: nn.Module, start: int, stop: int | None = None) -> Iterator[nn.Module]:
    """Within the block the backbone (a PEFT wrapper included) runs only its encoder layers ``start`` to
    ``stop`` (exclusive; None = the last). Below ``start``, nothing: with ``start > 0`` it takes the hidden
    states entering layer ``start`` as ``inputs_embeds``. With ``start = 0`` and a ``stop``, its
    ``last_hidden_state`` is what enters layer ``stop``: the two halves of a forward, split at one layer.

    transformers' own forward runs, so the attention mask is built as in a whole forward, and so is MPNet's
    relative position bias (a function of the sequence length only); RoBERTa and MPNet have no norm after
    the last layer. Modules are swapped back on exit; set train / eval outside the block."""
    model = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    if not isinstance(getattr(getattr(model, "encoder", None), "layer", None), nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no encoder.layer list: only BERT-like backbones (RoBERTa, "
                         "MPNet) run in parts")
    embeddings, layers = model.embeddings, model.encoder.layer
    stop = len(layers) if stop is None else stop
    if not 0 <= start < stop <= len(layers):
        raise ValueError(f"layers {start}..{stop - 1}: the backbone has layers 0..{len(layers) - 1}")
    model.encoder.layer = layers[start:stop]
    if start > 0:
        model.embeddings = _GivenStates()
    try:
        yield backbone
    finally:
        model.embeddings, model.encoder.layer = embeddings, layers


def mask_positions(input_ids: Tensor, mask_token_id: int) -> Tensor:
    """Index of the last mask token in each row; ValueError if a row has none."""
    is_mask = input_ids == mask_token_id
    if not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export() and not bool(is_mask.any(1).all()):
        raise ValueError("every prompt must contain the tokenizer's mask token")
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return torch.where(is_mask, positions, -1).max(1).values


def pad_to_bucket(input_ids: Tensor, attention_mask: Tensor, multiple: int, max_width: int,
                  pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad a batch to the next multiple of ``multiple`` tokens, capped at ``max_width`` (a batch already
    wider is left as it is). The padding has attention mask 0, so no real token's state changes."""
    width = input_ids.shape[1]
    target = max(width, min(-(-width // multiple) * multiple, max_width))
    if target == width:
        return input_ids, attention_mask
    return (F.pad(input_ids, (0, target - width), value=pad_token_id),
            F.pad(attention_mask, (0, target - width), value=0))


def bucket_widths(multiple: int, max_width: int) -> list[int]:
    """Every width pad_to_bucket gives a batch of at most ``max_width`` tokens: 64, 128, ..., 448, 511."""
    return sorted({min(w, max_width) for w in range(multiple, max_width + multiple, multiple)})


def collate_prompts(input_ids: list[tuple[int, ...]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad token id lists into (input_ids, attention_mask) tensors."""
    width = max(len(ids) for ids in input_ids)
    batch = torch.full((len(input_ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for row, ids in enumerate(input_ids):
        batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return batch, mask
