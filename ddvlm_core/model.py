"""DDVLM: text branch + visual head + residual gated fusion (paper Figure 2).

    prompt ──TextEncoder──> h_text, z_t ─────────────────────────┐
    caption ─Sentence-BERT─> e ──VisualHead──> h_visual, z_v ──ResidualGatedFusion──> z

The Sentence-BERT embedder stays outside the module (frozen, shared); the model takes its embedding.
"""
from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Iterator, Mapping

import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, nn

from ddvlm_core import checkpoint as ckpt
from ddvlm_core.assets import MINILM, MPNET, resolve_model
from ddvlm_core.fusion import FUSIONS, FusionOutput, make_fusion
from ddvlm_core.labels import NUM_LABELS
from ddvlm_core.text import (TextEncoder, TextOutput, check_prompt_fits, keep_position_bias_on_device, load_backbone,
                             load_tokenizer)
from ddvlm_core.visual import VisualHead, VisualOutput

TRAINED_MODULES = ("text_head", "visual_head", "fusion")
INDUCTOR_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
# "cudagraphs": dynamo's cudagraphs backend, the traced graph replayed as CUDA graphs without inductor (no Triton)
COMPILE_MODES = (*INDUCTOR_MODES, "cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune", "cudagraphs")  # the modes that record CUDA graphs (CUDA only)
LENGTH_BUCKET = 64  # CUDA-graph modes: prompts padded to a multiple of this many tokens (8 widths up to 511)
STATIC_SHAPES = 16  # cudagraphs mode on a GPU: the most shapes compiled (8 bucket widths at batch 1); more run eager
# where torch says why it runs a compiled graph without CUDA graphs (the artifact logger moved between versions)
CUDA_GRAPH_SKIP_LOGS = ("torch._inductor.cudagraph_utils.__cudagraphs", "torch._inductor.cudagraph_utils.__perf_hints")
NO_REASON = "torch gave no reason (TORCH_LOGS=cudagraphs,perf_hints shows it)"


def skip_reason(message: str) -> str:
    """torch's reason in its "skipping cudagraphs due to ..." warning, without the prefix and the stack trace
    that torch 2.11 appends ("... (arange_4). Found from : <trace>" -> "cpu device (arange_4)")."""
    reason = re.sub(r"^(skipping cudagraphs due to )+", "", message.splitlines()[0] if message else "")
    return re.sub(r"\.?\s*Found from\b.*$", "", reason).rstrip(". ")


class _Collect(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        first_line = record.getMessage().splitlines()[0]
        if "skipping cudagraphs" not in first_line:
            return
        reason = skip_reason(first_line)
        if reason not in self.into:
            self.into.append(reason)


@contextmanager
def cuda_graph_skips() -> Iterator[list[str]]:
    """The reasons torch gives, while the block runs, for running a compiled graph without recording CUDA
    graphs (its warning "skipping cudagraphs due to cpu device (arg1_1) ..." -> "cpu device (arg1_1)"), each
    once. torch also counts every skip: a count that grew with no warning caught (a torch whose logger has
    another name, or is off) gives NO_REASON. In a CUDA-graph mode on a GPU an empty list means the graphs
    were recorded."""
    from torch._dynamo.utils import counters

    reasons: list[str] = []
    handler = _Collect(reasons)
    loggers = [logging.getLogger(name) for name in CUDA_GRAPH_SKIP_LOGS]
    skips_before = counters["inductor"]["cudagraph_skips"]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield reasons
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        if counters["inductor"]["cudagraph_skips"] > skips_before and not reasons:
            reasons.append(NO_REASON)


def compile_options(mode: str, on_gpu: bool) -> dict:
    """torch.compile's arguments for ``DDVLM.compile_text(mode)``: dynamic shapes (one graph for every prompt
    length), except dynamo's ``cudagraphs`` backend on a GPU. That backend records a CUDA graph for the first shape
    it meets and then fails on the next ("The size of tensor a (64) must match the size of tensor b (128)",
    measured on the H100 with torch 2.11; pytorch/pytorch#131009, whose workaround is ``dynamic=False``), so there
    each bucket width is compiled as a static graph of its own, for single prompts only (``compile_text``:
    batches run eager, so no batch size costs a compile). Inductor's modes record a graph per shape themselves
    and keep dynamic shapes."""
    if mode == "cudagraphs":
        return {"backend": "cudagraphs", "dynamic": not on_gpu}
    return {"mode": mode, "dynamic": True}


def allow_static_shapes(count: int = STATIC_SHAPES) -> None:
    """Let dynamo compile ``count`` shapes of one function before it runs new ones uncompiled (its default, 8,
    leaves no margin over the 8 bucket widths)."""
    import torch._dynamo

    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), count))


def cuda_graph_outcome(mode: str, device: str, skipped: list[str]) -> str:
    """What a compile in ``mode`` on ``device`` did about CUDA graphs: "" (a mode without them), "off-gpu",
    "recorded" or "skipped" (``skipped``: torch's reasons)."""
    if mode not in CUDA_GRAPH_MODES:
        return ""
    if not str(device).startswith("cuda"):
        return "off-gpu"
    return "skipped" if skipped else "recorded"


def cuda_graph_note(mode: str, device: str, skipped: list[str]) -> str:
    """``cuda_graph_outcome`` in words: '' for a mode without CUDA graphs, "no CUDA graphs on cpu ..." off a GPU,
    else "CUDA graphs recorded" or "CUDA graphs skipped: <torch's reason>"."""
    outcome = cuda_graph_outcome(mode, device, skipped)
    if outcome == "off-gpu":
        return f"no CUDA graphs on {device} (they are recorded on a GPU only)"
    if outcome == "skipped":
        return f"CUDA graphs skipped: {skipped[0]}" + (f" (+{len(skipped) - 1} more)" if len(skipped) > 1 else "")
    return "CUDA graphs recorded" if outcome == "recorded" else ""


@dataclass
class DDVLMConfig:
    text_backbone: str = MPNET  # local dir, or an embedded asset name
    caption_embedder: str = MINILM  # local SentenceTransformer dir, or an embedded asset name
    text_dim: int = 768
    caption_dim: int = 384
    num_labels: int = NUM_LABELS
    dropout: float = 0.2  # Table 2
    n_speakers: int = 9
    max_tokens: int = 511  # Section 3.3
    speaker_tokens: bool = True
    fusion_alpha_init: float = 0.3  # Table 2
    fusion: str = "residual"  # "concat": Table 4's w/o residual fusion (ddvlm_core.fusion.ConcatFusion)
    lora: dict | None = None  # {"r", "alpha", "dropout", "targets"} when the backbone carries a LoRA adapter
    quantization: dict | None = None  # WOQConfig.as_dict() when the modules are stored as INT8
    # ddvlm_core.calibration: p = softmax(z / T), T fitted on dev (python -m training.calibrate); 1 = as trained
    text_temperature: float = 1.0  # of the text branch's logits (every answer without a caption)
    fused_temperature: float = 1.0  # of the fused logits (answers with a caption)
    # of the text answers flagged transcript-unpunctuated (their own: such text makes the model overconfident);
    # None: text_temperature
    unpunctuated_temperature: float | None = None

    def __post_init__(self):
        """Types and ranges checked, so that a damaged manifest fails at load with the field's name."""
        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        def positive(value) -> bool:
            return number(value) and 0 < value < float("inf")

        checks = [(name, isinstance(getattr(self, name), int) and number(getattr(self, name))
                   and getattr(self, name) >= 1, "an integer >= 1")
                  for name in ("text_dim", "caption_dim", "num_labels", "n_speakers", "max_tokens")]
        checks += [("num_labels", self.num_labels == NUM_LABELS, f"{NUM_LABELS} (MELD's labels)"),
                   ("dropout", number(self.dropout) and 0 <= self.dropout < 1, "a number in [0, 1)"),
                   ("fusion_alpha_init", number(self.fusion_alpha_init), "a number"),
                   ("text_temperature", positive(self.text_temperature), "a number > 0"),
                   ("fused_temperature", positive(self.fused_temperature), "a number > 0"),
                   ("unpunctuated_temperature", self.unpunctuated_temperature is None
                    or positive(self.unpunctuated_temperature), "a number > 0 or null"),
                   ("fusion", self.fusion in FUSIONS, f"one of {', '.join(FUSIONS)}"),
                   ("text_backbone", isinstance(self.text_backbone, str), "a str"),
                   ("caption_embedder", isinstance(self.caption_embedder, str), "a str"),
                   ("speaker_tokens", isinstance(self.speaker_tokens, bool), "true or false"),
                   ("lora", self.lora is None or isinstance(self.lora, dict), "a mapping or null"),
                   ("quantization", self.quantization is None or isinstance(self.quantization, dict),
                    "a mapping or null")]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: Mapping) -> "DDVLMConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown DDVLMConfig keys: {sorted(unknown)}")
        return cls(**values)


@dataclass
class DDVLMOutput:
    logits: Tensor  # final z (B, C): fused where a caption exists, else z_t
    text: TextOutput
    visual: VisualOutput | None
    fusion: FusionOutput | None


class DDVLM(nn.Module):
    def __init__(self, config: DDVLMConfig, text: TextEncoder):
        super().__init__()
        self.config = config
        self.text = text
        self.visual = VisualHead(config.caption_dim, config.text_dim, config.num_labels, config.dropout)
        self.fusion = make_fusion(config.fusion, config.text_dim, config.text_dim, config.num_labels,
                                  config.dropout, config.fusion_alpha_init)

    @classmethod
    def from_backbone(cls, config: DDVLMConfig):
        """(model, tokenizer) with the backbone from a local dir and freshly initialised heads."""
        path = resolve_model(config.text_backbone)
        tokenizer = load_tokenizer(path, config.n_speakers if config.speaker_tokens else 0)
        backbone = load_backbone(path, tokenizer)
        check_prompt_fits(config.max_tokens, backbone.config, path)
        if backbone.config.hidden_size != config.text_dim:
            config.text_dim = backbone.config.hidden_size
        return cls(config, TextEncoder(backbone, tokenizer.mask_token_id, config.num_labels, config.dropout)), tokenizer

    def forward_features(
        self, h_text: Tensor, caption_embedding: Tensor | None = None, has_visual: Tensor | None = None
    ) -> DDVLMOutput:
        """Everything after the backbone, from h_text (also used on cached features)."""
        z_t = self.text.classify(h_text)
        return self._fuse(TextOutput(z_t, h_text), caption_embedding, has_visual)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        caption_embedding: Tensor | None = None,
        has_visual: Tensor | None = None,
    ) -> DDVLMOutput:
        return self._fuse(self.text(input_ids, attention_mask), caption_embedding, has_visual)

    def _fuse(self, text: TextOutput, caption_embedding: Tensor | None, has_visual: Tensor | None) -> DDVLMOutput:
        if caption_embedding is None:
            return DDVLMOutput(text.logits, text, None, None)
        visual = self.visual(caption_embedding)
        fused = self.fusion(text.hidden, text.logits, visual.hidden, visual.logits, has_visual)
        return DDVLMOutput(fused.logits, text, visual, fused)

    def module_state_dicts(self, include_backbone: bool = False) -> dict[str, dict[str, Tensor]]:
        """Per-module tensors in checkpoint layout."""
        states = {
            "text_head": self.text.head.state_dict(),
            "visual_head": self.visual.state_dict(),
            "fusion": self.fusion.state_dict(),
        }
        if include_backbone:
            states["backbone"] = self.text.backbone.state_dict()
        if self.config.lora and hasattr(self.text.backbone, "peft_config"):
            from ddvlm_core.lora import adapter_state

            states["backbone_lora"] = adapter_state(self.text.backbone)
        return states

    def load_module_state_dicts(self, states: Mapping[str, Mapping[str, Tensor]]) -> None:
        targets = {"text_head": self.text.head, "visual_head": self.visual, "fusion": self.fusion,
                   "backbone": self.text.backbone}
        if "backbone_lora" in states:
            from ddvlm_core.lora import merge_adapter

            if not self.config.lora:
                raise ckpt.CheckpointError("checkpoint has a LoRA adapter but no 'lora' settings in its config")
            try:
                self.text.backbone = merge_adapter(self.text.backbone, self.config.lora, states["backbone_lora"])
            except (KeyError, RuntimeError, ValueError) as e:
                raise ckpt.CheckpointError(f"LoRA adapter does not fit the backbone: {e}") from None
        for name, state in states.items():
            if name not in targets:
                continue
            try:
                targets[name].load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ckpt.CheckpointError(f"module {name!r} does not fit the model: {e}") from None

    def quantize(self, config=None, calibration=None) -> "DDVLM":
        """WOQ INT8 (ddvlm_core.quantization) applied in place to each module separately: text encoder
        (backbone + head), visual head, fusion. A LoRA adapter is merged into the backbone first."""
        from ddvlm_core.quantization import WOQConfig, quantize_

        config = config or WOQConfig()
        if hasattr(self.text.backbone, "merge_and_unload"):
            self.text.backbone = self.text.backbone.merge_and_unload()
        self.config.lora = None
        for part in (self.text, self.visual, self.fusion):
            quantize_(part, config, calibration=calibration if calibration is not None else
                      ({} if config.awq_lite else None))
        self.config.quantization = config.as_dict()
        return self

    def compile_text(self, mode: str = "default") -> "DDVLM":
        """torch.compile the text backbone in place, with dynamic shapes: every prompt length shares one
        compiled graph (not in ``cudagraphs`` mode on a GPU, below). Compiling happens at the first calls (about a
        minute on a 2-core CPU; it needs a C++ compiler there, Triton on a GPU): ``EmotionRecognizer.warm_up``
        runs them. Weights and state dict are unchanged; a WOQ model keeps its int8 weights, and its per-call
        widening, epilogue and the element-wise ops around it are fused (bench/quantization.py, rows *_compiled).

        ``mode`` is one of torch.compile's (inductor) or ``cudagraphs``. ``reduce-overhead`` and ``max-autotune``
        also replay the backbone as CUDA graphs on a GPU (one launch per forward instead of one per kernel: at
        batch 1 the GPU otherwise waits on launches). ``cudagraphs`` replays the traced graph as CUDA graphs
        without inductor: the kernels are PyTorch's own, nothing is code-generated, so no Triton is needed (a
        Jetson's PyTorch may have none); on a GPU it compiles a static graph per width for single prompts, the
        node's case, and runs batches eager (``compile_options``); on a CPU it runs the traced graph as it is, no
        faster. A graph is recorded per input shape, so in these three modes prompts are padded to multiples of
        LENGTH_BUCKET tokens (``TextEncoder.length_bucket``): 8 widths up to 511 tokens. The model must be on its
        device already: on a CPU no CUDA graphs are recorded, and nothing is padded."""
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
        keep_position_bias_on_device(self.text.backbone)  # MPNet on older transformers: no CPU tensor in the graph
        on_gpu = next(self.text.backbone.parameters()).is_cuda
        options = compile_options(mode, on_gpu)
        if not options["dynamic"]:
            allow_static_shapes()
        self.text.backbone.compile(**options)
        self.text.compiled_batch_sizes = None if options["dynamic"] else (1,)  # static: one graph per width
        self.text.length_bucket = (LENGTH_BUCKET, self.config.max_tokens) if mode in CUDA_GRAPH_MODES and on_gpu \
            else None
        return self

    def save(self, directory: str | os.PathLike, modules: tuple[str, ...] = TRAINED_MODULES, extra=None):
        """Write the named modules (text_head, visual_head, fusion, backbone, backbone_lora)."""
        states = self.module_state_dicts(include_backbone="backbone" in modules)
        return ckpt.save_checkpoint(directory, {m: states[m] for m in modules}, asdict(self.config), extra)

    @classmethod
    def load(cls, directory: str | os.PathLike, backbone_path: str | None = None):
        """(model, tokenizer, manifest) from a checkpoint; the backbone comes from its local dir."""
        manifest, states = ckpt.load_checkpoint(directory)
        from ddvlm_core.quantization import WOQConfig

        try:
            config = DDVLMConfig.from_dict(manifest["config"])
            quantization = WOQConfig.from_dict(config.quantization) if config.quantization else None
        except (TypeError, ValueError) as e:
            raise ckpt.CheckpointError(f"{directory}: bad config in manifest ({e})") from None
        if backbone_path:
            config.text_backbone = backbone_path
        saved_dim = config.text_dim
        config.quantization = None  # the model is built in FP32, then quantized as the checkpoint was
        try:
            model, tokenizer = cls.from_backbone(config)
        except (OSError, ValueError, SafetensorError) as e:  # e.g. trained on another machine's local backbone
            raise ckpt.CheckpointError(f"{directory}: its backbone {config.text_backbone!r} cannot be loaded here "
                                       f"({type(e).__name__}: {e})") from None
        if quantization:
            model.quantize(quantization, calibration={})
        if model.config.text_dim != saved_dim:
            raise ckpt.CheckpointError(f"{directory}: backbone {config.text_backbone!r} has width "
                                       f"{model.config.text_dim}, the checkpoint's modules do not fit "
                                       f"(text_dim {saved_dim})")
        model.load_module_state_dicts(states)
        return model.eval(), tokenizer, manifest


def probabilities(logits: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """softmax(logits / temperature) in fp32 (ddvlm_core.calibration); temperature: a number, or one per row
    as an (N, 1) tensor."""
    return F.softmax(logits.float() / temperature, dim=-1)


__all__ = ["COMPILE_MODES", "compile_options", "cuda_graph_note", "cuda_graph_outcome", "cuda_graph_skips", "DDVLM",
           "DDVLMConfig", "DDVLMOutput", "TRAINED_MODULES", "probabilities"]
