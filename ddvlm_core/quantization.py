"""INT8 weight-only quantization (WOQ, paper Section 3.7) as a transform: ``quantize_(model, WOQConfig())``.

Every selected ``nn.Linear`` is replaced in place by ``Int8WeightOnlyLinear``: per-output-channel
symmetric INT8 weights and FP32 scales,

    s_j = max_i |W_ji| / 127            (a zero row gets s_j = 1)
    W_int8[j] = clamp(round(W[j] / s_j), -127, 127)
    y = x W^T ~= (x W_int8^T) * s + b    (activations stay floating point; LayerNorm and biases stay FP32)

Kernels (``WOQConfig.kernel``); activations are float16 on CUDA (the paper runs FP16 on the Jetson) and
bfloat16 on CPUs with native bf16 units (AMX-BF16, AVX512-BF16); on other CPUs ``decompress`` computes in
FP32 (``compute_dtype``). The matmul accumulates in FP32 and the per-channel scale and bias are applied in FP32:

- ``int8pack``: ``torch._weight_int8pack_mm``, a fused int8-weight kernel (the weight is read as int8
  inside the kernel). On x86 CPUs it is an AVX-512 kernel that does not use AMX: 1.7x FP32 latency on a
  128-token prompt on our AMX test machine (reports/quantization.md).
- ``decompress``: the int8 weight is widened to the compute dtype (bf16/fp16/fp32) on every call into one
  scratch buffer per weight shape and thread (a few MB, reused by every layer), then the vendor GEMM runs
  (oneDNN/MKL on CPU, which uses AMX-BF16 where the CPU has it; cuBLAS on CUDA). Exact: int8 values are
  exact in bf16/fp16/fp32, so it computes the same equation as ``int8pack``. Weights stay int8 in memory;
  this path does dequantize per call, and the reports say so. The widening pass is memory-bound (it is
  ~20 % of a 128-token forward on 2 cores); a GEMM that widens tiles while it computes would hide it, and
  PyTorch exposes none for CPU. On a CPU without native bf16 it computes in FP32, as a bf16 GEMM is
  emulated there: on a 2-core AVX2 AMD EPYC the model then runs at 1.01x / 0.97x FP32 latency (128 /
  511-token prompts) where ``int8pack`` takes 1.37x / 1.68x (reports/quantization_avx2).
- ``auto`` (default): ``decompress`` everywhere, in the compute dtype above.
- ``dequant``: the FP32 reference (dequantizes W to FP32 on every call; correct, slow, reported as such).

Module names and state-dict keys stay the same apart from the int8 ``weight``, its ``weight_scale`` and an
optional AWQ ``input_scale``.

AWQ-lite (``awq_lite=True``): per-input-channel scales from calibration activations,
s_in = mean|x|^a (a grid-searched per layer to minimise the output error), W' = W diag(s_in) is
quantized and the input is divided by s_in inside the layer. Encoders like MPNet/RoBERTa are post-LN:
the LayerNorm output also feeds the residual path, so the scale cannot be folded into the LayerNorm
without changing the model; it is applied in the layer instead (one elementwise multiply).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INT8_MAX = 127
KERNELS = ("auto", "int8pack", "decompress", "dequant")
AWQ_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. s_j = max|W_j,:| / 127, W_int8 = round(W / s_j) -> (int8 (out, in), fp32 scales (out,))."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / INT8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def dequantize_weight(q: Tensor, scale: Tensor) -> Tensor:
    """Eq. W^ = s_j W_int8[j]."""
    return q.float() * scale[:, None]


def compute_dtype(device: torch.device, requested: str = "auto", kernel: str = "decompress") -> torch.dtype:
    """The activations' dtype in a WOQ matmul. ``auto``: float16 on CUDA; on a CPU bfloat16 where it has native
    bf16 units, else float32 for ``decompress`` (a bf16 GEMM is emulated there, several times slower) and
    bfloat16 for ``int8pack`` (its float32 path is a slow reference loop)."""
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() or kernel == "int8pack" else torch.float32


def _read_cpu_bf16_units() -> tuple[str, ...]:
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return ()
    return tuple(name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if flag in flags)


_CPU_BF16_UNITS = _read_cpu_bf16_units()  # read once at import: a constant torch.compile can trace through


def cpu_bf16_units() -> tuple[str, ...]:
    """The CPU's native bf16 instruction sets (Linux /proc/cpuinfo flags), e.g. ("AMX-BF16", "AVX512-BF16")."""
    return _CPU_BF16_UNITS


def cpu_has_fast_bf16() -> bool:
    """AMX-BF16 or AVX-512-BF16: oneDNN then runs bf16 GEMMs natively."""
    return bool(cpu_bf16_units())


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """The kernel ``auto`` stands for on ``device`` (other names are returned unchanged)."""
    if kernel != "auto":
        return kernel
    return "decompress"  # in compute_dtype's dtype: fp16 (CUDA), bf16 (native bf16 CPUs), else fp32


@torch.library.custom_op("ddvlm::int8pack_mm", mutates_args=())
def int8pack_mm(x: Tensor, weight: Tensor, scale: Tensor) -> Tensor:
    """``torch._weight_int8pack_mm`` as an op torch.compile calls as it is: inductor's lowering of the aten op
    (torch 2.13) asserts when the scale is computed in the graph ("LoweringException: AssertionError:
    Pointwise"), as ``weight_scale.to(bf16)`` is; a custom op's inputs are materialised first."""
    return torch._weight_int8pack_mm(x, weight, scale)


@int8pack_mm.register_fake
def _int8pack_mm_shape(x: Tensor, weight: Tensor, scale: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


_SCRATCH = threading.local()


def _scratch(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """One reusable buffer per (shape, dtype, device) and thread for the decompressed weight."""
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (tuple(shape), dtype, str(device))
    if key not in buffers:
        with torch.inference_mode(False):  # a normal tensor: writable inside and outside inference mode
            buffers[key] = torch.empty(shape, dtype=dtype, device=device)
    return buffers[key]


@dataclass(frozen=True)
class WOQConfig:
    kernel: str = "auto"  # auto | int8pack (fused int8-weight matmul) | decompress | dequant (reference)
    compute_dtype: str = "auto"  # auto: float16 on CUDA, bfloat16 on native-bf16 CPUs, else float32 (compute_dtype)
    awq_lite: bool = False
    keep_float: tuple[str, ...] = ()  # names (substrings) of Linear layers to leave unquantized
    embeddings: bool = True  # also store large embedding tables (word embeddings) as per-row int8

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        if self.compute_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"compute_dtype {self.compute_dtype!r} not supported")
        if isinstance(self.keep_float, str) or not all(isinstance(k, str) for k in self.keep_float):
            # a bare str would be matched character by character, keeping nearly every layer float
            raise TypeError(f"keep_float is a tuple of layer names, got {self.keep_float!r}")

    def resolved(self, device: torch.device) -> tuple[str, torch.dtype]:
        """The kernel and the activations' dtype this configuration runs on ``device`` (``auto`` resolved)."""
        kernel = resolve_kernel(self.kernel, device)
        return kernel, compute_dtype(device, self.compute_dtype, kernel)

    def as_dict(self) -> dict:
        return {"method": "woq-int8", "kernel": self.kernel, "compute_dtype": self.compute_dtype,
                "awq_lite": self.awq_lite, "keep_float": list(self.keep_float), "embeddings": self.embeddings}

    @classmethod
    def from_dict(cls, values: dict) -> "WOQConfig":
        values = {k: v for k, v in values.items() if k != "method"}
        values["keep_float"] = tuple(values.get("keep_float", ()))
        return cls(**values)


class Int8WeightOnlyLinear(nn.Module):
    """y = ((x / s_in) W_int8^T) * s + b  with int8 weights (out, in) and fp32 per-output-channel scales."""

    def __init__(self, in_features: int, out_features: int, bias: bool, config: WOQConfig):
        super().__init__()
        self.in_features, self.out_features, self.config = in_features, out_features, config
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        if config.awq_lite:
            self.register_buffer("input_scale", torch.ones(in_features))
        else:
            self.input_scale = None
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: WOQConfig, input_scale: Tensor | None = None):
        with torch.device(linear.weight.device):  # built where the weight is: nothing crosses devices
            module = cls(linear.in_features, linear.out_features, linear.bias is not None, config)
        weight = linear.weight.detach().float()
        if input_scale is not None:
            input_scale = input_scale.to(weight.device)
            module.input_scale.copy_(input_scale)
            weight = weight * input_scale[None, :]
        q, s = quantize_weight(weight)
        module.weight.copy_(q)
        module.weight_scale.copy_(s)
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach().float())
        return module.to(linear.weight.device)

    def dequantize(self) -> Tensor:
        """The effective float weight (without the AWQ input scale folded back)."""
        w = dequantize_weight(self.weight, self.weight_scale)
        return w / self.input_scale[None, :] if self.input_scale is not None else w

    def forward(self, x: Tensor) -> Tensor:
        if self.input_scale is not None:
            x = x / self.input_scale.to(x.dtype)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        kernel, dt = self.config.resolved(x.device)
        if kernel == "decompress":
            y = self._decompressed_linear(x2, dt)
        else:
            if kernel == "dequant":
                y = F.linear(x2.float(), dequantize_weight(self.weight, self.weight_scale))
            else:
                # compiled: through an opaque op, as inductor's own lowering of the kernel fails on the cast scale
                mm = int8pack_mm if torch.compiler.is_compiling() else torch._weight_int8pack_mm
                y = mm(x2.to(dt).contiguous(), self.weight, self.weight_scale.to(dt)).float()
            if self.bias is not None:
                y = y + self.bias
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def _decompressed_linear(self, x2: Tensor, dt: torch.dtype) -> Tensor:
        """(x W_int8^T) * s + b with W_int8 widened to ``dt`` (exact) and the product in ``dt``, FP32 out.

        Under torch.compile the widening is a plain cast that inductor fuses into its generated code (the
        shared scratch buffer would break the graph); the weights stay int8 in memory either way."""
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and x2.requires_grad):  # autograd: no sharing
            weight = self.weight.to(dt)
        else:
            weight = _scratch(self.weight.shape, dt, x2.device).copy_(self.weight)
        y = F.linear(x2.to(dt), weight)
        return torch.addcmul(self.bias, y, self.weight_scale) if self.bias is not None else y * self.weight_scale

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, int8 per-channel, kernel={self.config.kernel} "
                f"({resolve_kernel(self.config.kernel, self.weight.device)}), "
                f"awq={self.input_scale is not None}")


def is_linear(module: nn.Module, name: str) -> bool:
    return type(module) is nn.Linear


def quantize_(model: nn.Module, config: WOQConfig = WOQConfig(),
              filter_fn: Callable[[nn.Module, str], bool] = is_linear,
              calibration: dict[str, Tensor] | None = None) -> nn.Module:
    """Replace every selected Linear of ``model`` in place by an Int8WeightOnlyLinear; returns ``model``.

    ``calibration`` (AWQ-lite only): layer name -> mean |x| per input channel, from ``collect_activation_stats``.
    """
    if config.awq_lite and calibration is None:
        raise ValueError("awq_lite needs calibration statistics (collect_activation_stats)")
    check_int8_kernel(next(model.parameters()).device, config)
    targets = [(name, m) for name, m in model.named_modules()
               if filter_fn(m, name) and not any(k in name for k in config.keep_float)]
    for name, linear in targets:
        scale = awq_input_scale(linear, name, calibration) if config.awq_lite else None
        _set_submodule(model, name, Int8WeightOnlyLinear.from_linear(linear, config, scale))
    if config.embeddings:
        quantize_embeddings_(model)
    return model


def awq_input_scale(linear: nn.Linear, name: str, calibration: dict[str, Tensor]) -> Tensor:
    """AWQ-lite's per-input-channel scale of one layer: searched (``awq_search``) from its calibration
    statistics, or all ones (plain WOQ) for a layer the calibration did not see, e.g. the visual head and the
    fusion when only the text encoder was calibrated. On the layer's device."""
    if name in calibration:
        return awq_search(linear, calibration[name])
    return torch.ones(linear.in_features, device=linear.weight.device)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@torch.no_grad()
def collect_activation_stats(model: nn.Module, run_batches: Callable[[], None],
                             filter_fn: Callable[[nn.Module, str], bool] = is_linear,
                             reduce: str = "mean") -> dict[str, Tensor]:
    """Per input channel of every selected Linear, while ``run_batches()`` runs the model: mean |x|
    (``reduce="mean"``, AWQ-lite) or max |x| (``reduce="max"``, SmoothQuant)."""
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    acc: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if filter_fn(module, name):
            def hook(mod, args, _out, name=name):
                x = args[0].detach().float().reshape(-1, args[0].shape[-1]).abs()
                if reduce == "max":
                    acc[name] = torch.maximum(acc[name], x.amax(0)) if name in acc else x.amax(0)
                else:
                    acc[name] = acc.get(name, 0) + x.sum(0)
                counts[name] = counts.get(name, 0) + x.shape[0]
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run_batches()
    finally:
        for h in hooks:
            h.remove()
    return {name: acc[name] / counts[name] if reduce == "mean" else acc[name] for name in acc}


@torch.no_grad()
def awq_search(linear: nn.Linear, act_mean: Tensor, grid: Iterable[float] = AWQ_GRID) -> Tensor:
    """Per-input-channel scale s = m^a / sqrt(max * min), a chosen on the grid to minimise the output error
    of the quantized layer on a probe built from the activation statistics (a = 0 is plain WOQ)."""
    w = linear.weight.detach().float()
    m = act_mean.float().to(w.device).clamp_min(1e-6)
    # the probe is drawn on the CPU (same numbers on every device), then moved to the weight's device
    probe = torch.randn(64, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.device) * m[None, :]
    reference = probe @ w.T
    best, best_err = torch.ones_like(m), float("inf")
    for a in grid:
        s = m.pow(a)
        s = s / (s.max() * s.min()).sqrt()
        q, scale = quantize_weight(w * s[None, :])
        err = ((probe / s) @ dequantize_weight(q, scale).T - reference).pow(2).mean().item()
        if err < best_err:
            best, best_err = s, err
    return best


_CHECKED: set[tuple[str, str, str]] = set()


def _known_answer(device: torch.device, config: WOQConfig) -> None:
    """x = [1, 2, 1, 2, ...] (64), W_int8 rows: all 1, alternating 1/-1, all 0, ...; s = [0.5, 2, 1, ...],
    b = [0, 1, 2, ...]  ->  y = [48, -63, 2, ...]. (The kernel crashes on some tiny shapes, so 8 x 64.)"""
    layer = Int8WeightOnlyLinear(64, 8, True, WOQConfig(kernel=config.kernel, compute_dtype=config.compute_dtype))
    w = torch.zeros(8, 64, dtype=torch.int8)
    w[0] = 1
    w[1, 0::2], w[1, 1::2] = 1, -1
    layer.weight.copy_(w)
    layer.weight_scale.copy_(torch.tensor([0.5, 2.0, 1, 1, 1, 1, 1, 1]))
    layer.bias.data.copy_(torch.arange(8.0))
    x = torch.tensor([1.0, 2.0] * 32, device=device)[None]
    y = layer.to(device)(x).cpu()[0]
    expected = torch.tensor([48.0, -63.0, 2, 3, 4, 5, 6, 7])
    if not torch.allclose(y, expected, atol=0.5):
        raise RuntimeError(f"int8 weight-only kernel {config.kernel!r} on {device} gave {y.tolist()}, "
                           f"expected {expected.tolist()}: refusing to run")


def check_int8_kernel(device: torch.device | str, config: WOQConfig = WOQConfig(), isolated: bool = True) -> None:
    """Run a tiny known-answer int8 matmul on ``device``; RuntimeError if the kernel is missing or wrong.

    Edge builds are known to fail at the first call of an int8 kernel rather than at import, sometimes by
    crashing the process: with ``isolated`` the first check per (device, kernel, dtype) runs in a child
    process, so a crash becomes a clear error instead of taking the caller (e.g. the ROS node) down.
    """
    from ddvlm_core.child import probe

    device = torch.device(device)
    key = (str(device), config.kernel, config.compute_dtype)
    if isolated and key not in _CHECKED:
        code = ("import sys, torch; from ddvlm_core.quantization import WOQConfig, _known_answer; "
                f"_known_answer(torch.device({str(device)!r}), WOQConfig(kernel={config.kernel!r}, "
                f"compute_dtype={config.compute_dtype!r}))")
        why = probe(code, timeout_s=300)
        if why:
            raise RuntimeError(f"int8 weight-only kernel {config.kernel!r} unavailable on {device}: {why}")
    try:
        _known_answer(device, config)
    except (NotImplementedError, TypeError) as e:
        raise RuntimeError(f"int8 weight-only kernel {config.kernel!r} unavailable on {device}: {e}") from None
    _CHECKED.add(key)


class Int8Embedding(nn.Module):
    """Embedding table with per-row symmetric INT8 weights (the same equation as the Linear rows); the
    looked-up rows are dequantized, which is a gather, not a matmul."""

    def __init__(self, num_embeddings: int, dim: int, padding_idx: int | None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, dim, padding_idx
        self.register_buffer("weight", torch.zeros(num_embeddings, dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding) -> "Int8Embedding":
        module = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx)
        q, s = quantize_weight(emb.weight)
        module.weight.copy_(q)
        module.weight_scale.copy_(s)
        return module.to(emb.weight.device)

    def forward(self, ids: Tensor) -> Tensor:
        return self.weight[ids].float() * self.weight_scale[ids].unsqueeze(-1)


def quantize_embeddings_(model: nn.Module, min_rows: int = 1000) -> nn.Module:
    """Replace large nn.Embedding tables (word embeddings) by Int8Embedding in place."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.Embedding and module.num_embeddings >= min_rows:
            _set_submodule(model, name, Int8Embedding.from_embedding(module))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (what a checkpoint of the model stores)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
