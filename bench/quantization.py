"""WOQ INT8 vs the alternatives on the embedded default checkpoint (CPU here; GPU columns when run there).

    python bench/quantization.py [--split test] [--limit 0] [--rows fp32,woq,...] [--device cuda] [--report-dir reports]

Each row runs in its own process (clean peak RSS, and a crashing int8 kernel cannot take the bench down):
MELD WA-F1 of the whole model (a LoRA adapter is merged first), weight bytes, latency p50/p90 of one
prompt of 128 and of 511 tokens (ratios to FP32 of the same run), peak RSS. Writes
quantization.json and quantization.md to --report-dir (default reports/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared import refuse_non_checkpoint  # noqa: E402
ROWS = {
    "fp32": "FP32 (PyTorch)",
    "fp16": "FP16 (PyTorch, GPU)",
    "bf16": "BF16 autocast (PyTorch, CPU)",
    "woq": "WOQ INT8, ours (default kernel)",
    "woq_awq": "WOQ INT8 + AWQ-lite, ours (default kernel)",
    "woq_int8pack": "WOQ INT8, ours, fused int8pack kernel (torch._weight_int8pack_mm)",
    "woq_dequant": "WOQ INT8, ours, FP32 reference kernel (dequantizes W to FP32 every call)",
    "woq_compiled": "WOQ INT8, ours (default kernel), torch.compile",
    "fp32_compiled": "FP32 (PyTorch), torch.compile",
    "woq_cudagraphs": "WOQ INT8, ours (default kernel), torch.compile + CUDA graphs",
    "fp32_cudagraphs": "FP32 (PyTorch), torch.compile + CUDA graphs",
    "woq_graphed": "WOQ INT8, ours (default kernel), CUDA graphs without inductor (no Triton)",
    "fp32_graphed": "FP32 (PyTorch), CUDA graphs without inductor (no Triton)",
    "dynamic": "PyTorch dynamic INT8 (quantize_dynamic, W8A8 dynamic)",
    "smoothquant": "SmoothQuant W8A8 (alpha 0.5, own implementation on quantize_dynamic)",
    "onnx_int8": "ONNX Runtime INT8 (export + quantize_dynamic, QInt8 weights)",
}
TRTEXEC = ("trtexec --onnx=ddvlm_text_fp32.onnx --fp16 --int8 --saveEngine=ddvlm_text.plan "
           "--minShapes=input_ids:1x8,attention_mask:1x8 --optShapes=input_ids:1x128,attention_mask:1x128 "
           "--maxShapes=input_ids:1x511,attention_mask:1x511")


def default_checkpoint() -> str:
    from ddvlm_core.cli import DEFAULT_CHECKPOINT

    return str(DEFAULT_CHECKPOINT)


def prompts(split: str, limit: int, tokenizer, max_tokens: int):
    from ddvlm_core.context import PromptBuilder
    from training.data import build_examples

    examples = build_examples(split, PromptBuilder(tokenizer, max_tokens))
    return examples[:limit] if limit else examples


def smooth_quant_(text, calibration: dict, alpha: float = 0.5):
    """SmoothQuant: s_j = max|X_j|^a / max|W_:,j|^(1-a); W' = W diag(s), x' = x / s; then W8A8 dynamic."""
    import torch
    from torch import nn

    class Smoothed(nn.Module):
        def __init__(self, linear, s):
            super().__init__()
            self.register_buffer("inv_s", 1 / s)
            lin = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None)
            lin.weight.data = linear.weight.data * s[None, :]
            if linear.bias is not None:
                lin.bias.data = linear.bias.data.clone()
            self.linear = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)

        def forward(self, x):
            return self.linear(x * self.inv_s)

    from ddvlm_core.quantization import _set_submodule

    for name, module in list(text.named_modules()):
        if type(module) is nn.Linear and name in calibration:
            x_max = calibration[name].clamp_min(1e-5)
            w_max = module.weight.detach().abs().amax(0).clamp_min(1e-5)
            s = (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp(1e-2, 1e2)
            _set_submodule(text, name, Smoothed(module, s))
    return text


WOQ_KERNELS = {"woq": "auto", "woq_int8pack": "int8pack", "woq_dequant": "dequant"}
KERNEL_NOTES = {
    "decompress": "kernel decompress: int8 weights widened to {dtype} on every call into a reused scratch buffer, "
                  "then the vendor GEMM ({gemm}); weights stay int8 in memory",
    "int8pack": "kernel int8pack: fused int8-weight matmul, torch._weight_int8pack_mm, {dtype} activations",
    "dequant": "kernel dequant: the FP32 reference, dequantizes W to FP32 on every call",
}
CPU_ONLY = {"bf16", "dynamic", "smoothquant", "onnx_int8"}  # CPU kernels / CPU runtimes
GPU_ONLY = {"fp16", "woq_cudagraphs", "fp32_cudagraphs", "woq_graphed", "fp32_graphed"}
PROGRESS = "bench progress: "  # a child's stderr lines saying what it starts (see progress)
FRAME = re.compile(r'\s*File "(.+)", line (\d+), in (.+)$')  # a traceback frame
# row suffix -> DDVLM.compile_text mode
COMPILE_SUFFIXES = {"_compiled": "default", "_cudagraphs": "reduce-overhead", "_graphed": "cudagraphs"}


def kernel_note(kernel: str, device: str) -> str:
    """What a WOQ kernel runs on ``device``: the kernel ``auto`` stands for, its compute dtype and GEMM."""
    import torch

    from ddvlm_core.quantization import WOQConfig, cpu_bf16_units

    dev = torch.device(device)
    kernel, dtype = WOQConfig(kernel=kernel).resolved(dev)
    dtype = str(dtype).removeprefix("torch.")
    units = "/".join(cpu_bf16_units())
    gemm = ("cuBLAS" if dev.type == "cuda" else f"oneDNN, {units} on this CPU" if dtype == "bfloat16"
            else "FP32 GEMM: this CPU has no native bf16 units")
    return KERNEL_NOTES[kernel].format(dtype=dtype, gemm=gemm)


def build(row: str, directory: str, calib_examples, pad_id, device: str = "cpu"):
    """(predict_fn(ids, mask) -> logits on the CPU, weight_bytes, note, graphs); the model runs on ``device``;
    ``graphs`` is what a CUDA-graph compile did ({} for other rows, see ``compile_row``)."""
    import torch

    from ddvlm_core.model import DDVLM
    from ddvlm_core.quantization import WOQConfig, collect_activation_stats, weight_bytes
    from ddvlm_core.text import collate_prompts

    if device.startswith("cuda") and row in CPU_ONLY:
        raise ValueError(f"row {row!r} is CPU-only")
    if device == "cpu" and row in GPU_ONLY:
        raise ValueError(f"row {row!r} needs a GPU")
    suffix = next((x for x in COMPILE_SUFFIXES if row.endswith(x)), "")
    row = row.removesuffix(suffix)
    model, tok, _ = DDVLM.load(directory)
    model.eval().to(device)
    if hasattr(model.text.backbone, "merge_and_unload"):
        model.text.backbone = model.text.backbone.merge_and_unload()
    text = model.text

    def calibrate(reduce: str = "mean"):
        def run():
            for i in range(0, len(calib_examples), 16):
                ids, mask = collate_prompts([e.input_ids for e in calib_examples[i:i + 16]], pad_id)
                text(ids.to(device), mask.to(device))
        return collect_activation_stats(text, run, reduce=reduce)

    note = ""
    if row in WOQ_KERNELS:
        config = WOQConfig(kernel=WOQ_KERNELS[row])
        model.quantize(config)
        note = kernel_note(config.kernel, device)
    elif row == "woq_awq":
        stats = calibrate()
        model.quantize(WOQConfig(awq_lite=True), calibration=stats)
        note = (f"{kernel_note('auto', device)}; AWQ-lite calibrated on "
                f"{len(calib_examples)} MELD dev prompts")
    elif row == "dynamic":
        model.text = text = torch.ao.quantization.quantize_dynamic(text, {torch.nn.Linear}, dtype=torch.qint8)
    elif row == "smoothquant":
        smooth_quant_(text, calibrate("max"))
        note = f"smoothing scales from {len(calib_examples)} MELD dev prompts"
    elif row == "onnx_int8":
        return (*onnx_int8(text, pad_id), {})
    graphs: dict = {}
    if suffix:
        note, graphs = compile_row(model, tok, device, COMPILE_SUFFIXES[suffix], woq=row in WOQ_KERNELS)
    size = weight_bytes(text)
    if row in ("dynamic", "smoothquant"):
        size = dynamic_bytes(text)
    if row == "bf16":
        def predict(ids, mask):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return text(ids, mask).logits.float()
        return predict, weight_bytes(text) // 2, "weights cast to bf16 on the fly by autocast (stored FP32)", {}
    if row == "fp16":
        text.half()
        note = "weights and activations FP16"
    return (lambda ids, mask: text(ids.to(device), mask.to(device)).logits.float().cpu()), size, note, graphs


def compile_row(model, tokenizer, device: str, mode: str, woq: bool) -> tuple[str, dict]:
    """Compile the row's model in ``mode`` now (DDVLM.compile_text + warm-up): the report's note on it, and for a
    CUDA-graph mode on a GPU the row's fields {"cuda_graphs": "recorded" | "skipped", "cuda_graph_skips":
    [torch's reasons]}, which the model card reads."""
    import torch

    from ddvlm_core.model import CUDA_GRAPH_MODES, compile_options, cuda_graph_outcome
    from ddvlm_core.quantization import WOQConfig

    how = "dynamo cudagraphs backend, no inductor" if mode == "cudagraphs" else f"inductor {mode}"
    dynamic = compile_options(mode, on_gpu=str(device).startswith("cuda"))["dynamic"]
    shapes = "dynamic shapes" if dynamic else "static shapes: a graph per width for single prompts, batches eager"
    graphs = ", CUDA graphs per 64-token length bucket" if mode in CUDA_GRAPH_MODES else ""
    compiled, skips = compile_now(model, tokenizer, device, mode)
    note = f"torch.compile ({how}, {shapes}{graphs}): {compiled}"
    outcome = cuda_graph_outcome(mode, device, skips)
    fields = {"cuda_graphs": outcome, "cuda_graph_skips": skips} if outcome in ("recorded", "skipped") else {}
    if not woq:
        return note, fields
    if mode == "cudagraphs":
        kernel = ("kernel decompress traced by torch.compile and replayed as CUDA graphs with PyTorch's own kernels "
                  "(int8 -> fp16 widening, vendor GEMM, scale and bias)")
    else:
        dtype = str(WOQConfig().resolved(torch.device(device))[1]).removeprefix("torch.")
        kernel = (f"kernel decompress traced by torch.compile: the int8 -> {dtype} widening, the scale and bias "
                  "and the element-wise ops around them are inductor-generated code, the GEMM the vendor's")
    return f"{kernel}; weights stay int8 in memory; {note}", fields


def compile_now(model, tokenizer, device: str, mode: str) -> tuple[str, list[str]]:
    """Compile the text encoder and run its first calls as the node does (EmotionRecognizer.warm_up): what
    happened, in words, and the reasons torch gave for skipping CUDA graphs (``ddvlm_core.model.skip_reason``)."""
    from ddvlm_core.inference import EmotionRecognizer

    from ddvlm_core.model import cuda_graph_note

    model.compile_text(mode)
    recognizer = EmotionRecognizer(model, tokenizer, device=device)
    progress(f"compiling ({mode}): the warm-up's first calls")
    seconds = recognizer.warm_up()
    graphs = cuda_graph_note(mode, device, recognizer.cuda_graph_skips)
    return f"compiled in {seconds:.0f} s" + (f", {graphs}" if graphs else ""), list(recognizer.cuda_graph_skips)


def dynamic_bytes(module) -> int:
    """Bytes of a quantize_dynamic'd module: packed int8 weights, fp32 scales and biases, float tensors left."""
    total = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
    for m in module.modules():
        if hasattr(m, "_packed_params") and callable(getattr(m, "weight", None)):
            w, b = m.weight(), m.bias()
            total += w.int_repr().numel() + (b.numel() * 4 if b is not None else 0)
            total += w.q_per_channel_scales().numel() * 4 if w.qscheme() != torch_per_tensor() else 4
    return total


def torch_per_tensor():
    import torch

    return torch.per_tensor_affine


def onnx_int8(text, pad_id):
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Logits(torch.nn.Module):
        def __init__(self, t):
            super().__init__()
            self.t = t

        def forward(self, ids, mask):
            return self.t(ids, mask).logits

    wrapper = Logits(text).eval()
    tmp = Path(tempfile.mkdtemp())
    ids = torch.full((1, 16), 5, dtype=torch.long)
    ids[0, -2] = text.mask_token_id
    torch.onnx.export(wrapper, (ids, torch.ones_like(ids)), str(tmp / "fp32.onnx"), dynamo=False,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}})
    quantize_dynamic(str(tmp / "fp32.onnx"), str(tmp / "int8.onnx"), weight_type=QuantType.QInt8, per_channel=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    session = ort.InferenceSession(str(tmp / "int8.onnx"), options, providers=["CPUExecutionProvider"])

    def predict(ids, mask):
        out = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        return torch.from_numpy(out)

    note = "ONNX file size; exported with torch.onnx (TorchScript exporter)"
    return predict, (tmp / "int8.onnx").stat().st_size, note


def measure_latency(predict, mask_token_id: int, repeats: int, sync, vocab_size: int = 1000) -> dict:
    """p50 / p90 ms of one prompt of 128 and of 511 tokens of random ids (3 warm-up calls each)."""
    import torch

    latency = {}
    with torch.inference_mode():
        for length in (128, 511):
            ids = torch.randint(5, min(1000, vocab_size), (1, length))
            ids[0, -2] = mask_token_id
            mask = torch.ones_like(ids)
            for _ in range(3):
                predict(ids, mask)
            times = []
            for _ in range(repeats):
                sync()
                t = time.perf_counter()
                predict(ids, mask)  # returns CPU logits: the device work is finished
                times.append(1000 * (time.perf_counter() - t))
            latency[f"b1x{length}"] = {"p50_ms": float(np.percentile(times, 50)),
                                       "p90_ms": float(np.percentile(times, 90))}
    return latency


def run_row(row: str, args) -> dict:
    """The child process of one row: MELD accuracy + latency, or (``--latency-only``) latency alone."""
    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()
    from ddvlm_core.metrics import metrics
    from ddvlm_core.model import DDVLM
    from training.evaluate import predict_examples

    torch.manual_seed(0)
    _, tok, manifest = DDVLM.load(args.checkpoint)
    max_tokens = manifest["config"]["max_tokens"]
    calib = prompts("dev", 64, tok, max_tokens)
    t0 = time.perf_counter()
    progress(f"building the {row} model")
    predict, size, note, graphs = build(row, args.checkpoint, calib, tok.pad_token_id, args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    build_s = time.perf_counter() - t0
    if args.latency_only:
        progress(f"timing latency (built in {build_s:.0f} s)")
        return {"row": row, "latency": measure_latency(predict, tok.mask_token_id, args.repeats, sync, len(tok))}
    examples = prompts(args.split, args.limit, tok, max_tokens)
    progress(f"scoring {len(examples)} {args.split} utterances (built in {build_s:.0f} s)")
    preds = predict_examples(predict, examples, tok.pad_token_id)
    score = metrics([e.label for e in examples], preds)
    progress(f"timing latency (built in {build_s:.0f} s, scored)")
    latency = measure_latency(predict, tok.mask_token_id, args.repeats, sync, len(tok))
    return {"row": row, "title": ROWS[row], "wa_f1": score["wa_f1"], "accuracy": score["accuracy"], "n": score["n"],
            "weight_bytes": int(size), "latency": latency, "build_s": build_s, "note": note, **graphs,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "predictions": preds.tolist()}


def median_latency(rounds: list[dict]) -> dict:
    """Per prompt length, the median over rounds of each round's p50 and p90."""
    return {k: {q: float(np.median([r[k][q] for r in rounds])) for q in ("p50_ms", "p90_ms")} for k in rounds[0]}


def child(row: str, args, latency_only: bool = False) -> tuple[dict | None, str]:
    """Run one row in a fresh process: (result, error tail)."""
    out = Path(tempfile.mkdtemp()) / f"{row}.json"
    cmd = [sys.executable, __file__, "--row", row, "--out", str(out), "--checkpoint", args.checkpoint,
           "--split", args.split, "--limit", str(args.limit), "--repeats", str(args.repeats), "--device", args.device]
    try:
        proc = subprocess.run(cmd + (["--latency-only"] if latency_only else []), capture_output=True, text=True,
                              timeout=args.row_timeout or None)
    except subprocess.TimeoutExpired as e:
        return None, timeout_text(args.row_timeout, e.stderr)
    if proc.returncode != 0:
        return None, failure_text(proc.stderr, proc.returncode)
    return json.loads(out.read_text()), ""


def timeout_text(seconds: float, stderr: bytes | str | None) -> str:
    """A row stopped by --row-timeout: how long it had, and the last step its child said it started."""
    stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else (stderr or "")
    steps = [line.removeprefix(PROGRESS) for line in stderr.splitlines() if line.startswith(PROGRESS)]
    return f"timed out after {seconds:g} s (--row-timeout)" + (f" while {steps[-1]}" if steps else "")


def progress(step: str) -> None:
    """A row's child says what it starts now (on stderr), so that a row stopped by --row-timeout says where."""
    print(PROGRESS + step, file=sys.stderr, flush=True)


def failure_text(stderr: str, returncode: int) -> str:
    """A failed row's error: the exception's last line and where it was raised, the innermost frame, and
    (when that is in a library) the innermost frame of this repository, e.g. "RuntimeError: ... (at
    torch/nn/functional.py:2 linear; from ddvlm_core/quantization.py:170 forward)". The lent GPU returns only
    the report, so the report carries the place."""
    lines = stderr.strip().splitlines()
    if not lines:
        return f"exit {returncode}"
    frames = [m.groups() for m in map(FRAME.match, lines) if m]
    if not frames:
        return lines[-1]
    places = [f"{short_path(path)}:{line} {func}" for path, line, func in frames]
    ours = [place for (path, _, _), place in zip(frames, places) if is_repo_file(path)]
    where = places[-1] if not ours or ours[-1] == places[-1] else f"{places[-1]}; from {ours[-1]}"
    return f"{lines[-1]} (at {where})"


def short_path(path: str) -> str:
    """A traceback's file path relative to site-packages or to this repository."""
    if "site-packages/" in path:
        return path.rsplit("site-packages/", 1)[1]
    return os.path.relpath(path, REPO) if is_repo_file(path) else path


def is_repo_file(path: str) -> bool:
    return "site-packages/" not in path and Path(path).resolve().is_relative_to(REPO.resolve())


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=default_checkpoint(),
                    help="checkpoint to quantize (default: the embedded one)")
    ap.add_argument("--split", default="test", help="MELD split scored for WA-F1")
    ap.add_argument("--limit", type=int, default=0, help="first N utterances only (0 = the whole split)")
    ap.add_argument("--rows", help="default: every row the device runs")
    ap.add_argument("--repeats", type=int, default=20, help="latency samples per prompt length and row")
    ap.add_argument("--latency-rounds", type=int, default=3,
                    help="latency is measured this many times, each row in a fresh process, rows in rotated order; "
                         "the report gives the median round (this VM's speed drifts between minutes)")
    ap.add_argument("--latency-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU columns (CPU-only rows are refused)")
    ap.add_argument("--report-dir", default=str(REPO / "reports"), help="where quantization[_gpu].{md,json} go")
    ap.add_argument("--row-timeout", type=float, default=0,
                    help="seconds a row's process may run before it is stopped and reported as failed (0: no limit)")
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--render", metavar="JSON", help="only rewrite the Markdown report next to an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.render:
        if not Path(args.render).is_file():
            ap.error(f"--render: no such report: {args.render}")
        try:
            return render(Path(args.render))
        except (ValueError, KeyError, TypeError) as e:  # KeyError: a report whose rows lack what the table shows
            ap.error(f"--render: {e}" if not isinstance(e, KeyError) else f"--render: an incomplete report (no {e})")
    unknown = [row for row in (args.rows or "").split(",") if row and row not in ROWS]
    if unknown:
        ap.error(f"--rows: unknown {', '.join(unknown)} (rows: {', '.join(ROWS)})")
    for name, value, least in (("--limit", args.limit, 0), ("--repeats", args.repeats, 1),
                               ("--latency-rounds", args.latency_rounds, 1), ("--row-timeout", args.row_timeout, 0)):
        if not value >= least:
            ap.error(f"{name} must be >= {least}, got {value}")
    if args.row:  # child process
        Path(args.out).write_text(json.dumps(run_row(args.row, args)))
        return 0
    refuse_non_checkpoint(ap, args.checkpoint, "--checkpoint")
    skip = CPU_ONLY if args.device.startswith("cuda") else GPU_ONLY
    rows = args.rows.split(",") if args.rows else [r for r in ROWS if r not in skip]
    results = []
    for row in rows:
        t0 = time.perf_counter()
        r, error = child(row, args)
        if r is None:
            results.append({"row": row, "title": ROWS[row], "error": error})
            print(f"{row}: FAILED ({error})")
        else:
            r["latency_rounds"] = [r["latency"]]
            results.append(r)
            print(f"{row}: WA-F1 {r['wa_f1']:.2f}, {r['weight_bytes'] / 2**20:.1f} MiB, "
                  f"b1x128 p50 {r['latency']['b1x128']['p50_ms']:.1f} ms ({time.perf_counter() - t0:.0f}s)", flush=True)
        # the report so far, rewritten after every row: a run stopped from outside (a lent GPU's time is up)
        # still leaves the rows it finished
        write_report(results, args, pending=rows[len(results):])
    ok = [r for r in results if "error" not in r]
    for k in range(1, args.latency_rounds if ok else 1):  # more latency rounds, fresh processes, rotated order
        for r in ok[k % len(ok):] + ok[:k % len(ok)]:
            extra, error = child(r["row"], args, latency_only=True)
            if extra is None:
                print(f"{r['row']}: latency round {k + 1} FAILED ({error})")
                continue
            r["latency_rounds"].append(extra["latency"])
        print(f"latency round {k + 1} of {args.latency_rounds} done", flush=True)
    for r in ok:
        r["latency"] = median_latency(r["latency_rounds"])
    write_report(results, args)
    return 0


def same_mode_ratios(ok: dict[str, dict]) -> list[str]:
    """Each compiled row's latency against FP32 compiled the same way (e.g. woq_cudagraphs / fp32_cudagraphs):
    stored in the row as ``latency_ratio_vs_fp32_same_mode``; returns the report's note lines."""
    lines = []
    for suffix in COMPILE_SUFFIXES:
        base = ok.get("fp32" + suffix)
        for name, r in ok.items():
            if base and name != base["row"] and name.endswith(suffix):
                ratio = {k: r["latency"][k]["p50_ms"] / base["latency"][k]["p50_ms"] for k in ("b1x128", "b1x511")}
                r["latency_ratio_vs_fp32_same_mode"] = ratio
                lines.append(f"- {r['title']}: {ratio['b1x128']:.2f} / {ratio['b1x511']:.2f} x {base['title']} "
                             "(128 / 511 tokens, same execution mode)")
    return lines


def write_report(results: list[dict], args, pending: list[str] | None = None) -> None:
    """reports/quantization[_gpu].{json,md}; ``pending``: rows not run yet (a report written while running)."""
    ok = {r["row"]: r for r in results if "error" not in r}
    base = ok.get("fp32")
    for r in ok.values():
        if base:
            r["wa_f1_drop_vs_fp32"] = base["wa_f1"] - r["wa_f1"]
            r["bytes_ratio_vs_fp32"] = r["weight_bytes"] / base["weight_bytes"]
            r["latency_ratio_vs_fp32"] = {k: r["latency"][k]["p50_ms"] / base["latency"][k]["p50_ms"]
                                          for k in r["latency"]}
            r["agreement_with_fp32"] = float(np.mean(np.array(r["predictions"]) == np.array(base["predictions"])))
        if "dynamic" in ok:
            r["latency_ratio_vs_dynamic"] = {k: r["latency"][k]["p50_ms"] / ok["dynamic"]["latency"][k]["p50_ms"]
                                             for k in r["latency"]}
    import torch

    from ddvlm_core.quantization import cpu_bf16_units

    measured = base or next(iter(ok.values()), None)  # every row scores the same utterances
    meta = {"checkpoint": args.checkpoint, "split": args.split, "n": measured["n"] if measured else None,
            "device": args.device, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16": list(cpu_bf16_units()),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "latency_rounds": args.latency_rounds, "pending_rows": list(pending or [])}
    if args.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "unavailable"
    slim = [{k: v for k, v in r.items() if k != "predictions"} for r in results]
    lines = markdown(meta, slim, pending)
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = report_name(meta)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": slim, "tensorrt": TRTEXEC}, indent=1) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    if pending is None:
        print("\n".join(lines))


def report_name(meta: dict) -> str:
    return "quantization_gpu" if meta["device"].startswith("cuda") else "quantization"


def ratio_pair(ratio: dict | None) -> str:
    """'0.54 / 0.50' for 128 / 511 tokens; '—' where the row has no such ratio (no dynamic INT8 row on a GPU)."""
    return f"{ratio['b1x128']:.2f} / {ratio['b1x511']:.2f}" if ratio else "—"


def markdown(meta: dict, rows: list[dict], pending: list[str] | None = None) -> list[str]:
    """The Markdown report of a run's meta and rows (the JSON's, ratios included)."""
    gpu = meta["device"].startswith("cuda")
    rounds = meta.get("latency_rounds") or max([len(r.get("latency_rounds", [])) for r in rows] + [1])
    ok = {r["row"]: r for r in rows if "error" not in r}
    same_modes = same_mode_ratios(ok)
    lines = [f"# Quantization comparison ({meta['gpu'] if gpu else 'CPU'})", "",
             f"`python bench/quantization.py` on `{meta['checkpoint']}`, MELD {meta['split']} "
             f"({meta['n']} utterances), torch {meta['torch']}, {meta['cpu_capability']} "
             f"(bf16 units: {', '.join(meta['cpu_bf16']) or 'none'}), {meta['threads']} threads. "
             f"Latency: one prompt of 128 / 511 tokens, p50 (p90) ms, median of {rounds} rounds "
             "(each row in a fresh process per round, rows in rotated order); ratios to FP32 measured in the same run. "
             + ("WOQ activations are FP16 on CUDA; each WOQ row's note names its kernel." if gpu else
                "CPU run: the FP16 row and the GPU columns are in reports/quantization_gpu.md when measured."), "",
             "| method | WA-F1 | drop vs FP32 | agree w/ FP32 | weight MiB | bytes vs FP32 | b1x128 ms | b1x511 ms | "
             "x FP32 (128 / 511) | x dynamic (128 / 511) | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['title']} | failed: {r['error']} |" + " |" * 9)
            continue
        lat = r["latency"]
        lines.append(
            f"| {r['title']} | {r['wa_f1']:.2f} | {r.get('wa_f1_drop_vs_fp32', 0):+.2f} | "
            f"{100 * r.get('agreement_with_fp32', 1):.1f}% | {r['weight_bytes'] / 2**20:.1f} | "
            f"{r.get('bytes_ratio_vs_fp32', 1):.3f} | {lat['b1x128']['p50_ms']:.1f} ({lat['b1x128']['p90_ms']:.1f}) | "
            f"{lat['b1x511']['p50_ms']:.1f} ({lat['b1x511']['p90_ms']:.1f}) | "
            f"{ratio_pair(r.get('latency_ratio_vs_fp32', {'b1x128': 1, 'b1x511': 1}))} | "
            f"{ratio_pair(r.get('latency_ratio_vs_dynamic'))} | {r['peak_rss_mb']:.0f} |")
    notes = [f"- {r['title']}: {r['note']}" for r in rows if r.get("note")]
    spread = [f"{r['row']} " + " / ".join(f"{x['b1x128']['p50_ms']:.1f}" for x in r["latency_rounds"])
              for r in rows if len(r.get("latency_rounds", [])) > 1]
    if spread:
        notes.append("- b1x128 p50 ms in each latency round: " + "; ".join(spread))
    notes += same_modes
    lines += ["", *notes, "", "TensorRT on the Jetson (not runnable here; export the FP32 ONNX first):", "",
              f"    {TRTEXEC}"]
    if pending is not None:  # written while running: [] once every row ran, before the further latency rounds
        lines[2:2] = [f"**Partial report, written while the bench was running**: rows not run yet: "
                      f"{', '.join(pending) or 'none'}; latency is the first round's.", ""]
    return lines


def render(json_path: Path) -> int:
    """The Markdown report again, next to an earlier run's JSON (e.g. one brought back from the GPU machine);
    the JSON is rewritten with the fields this version stores (``graph_fields_from_note``)."""
    from training.ablate import read_rows_report

    report = read_rows_report(json_path, "meta", "a quantization report (one has 'meta' and 'rows'; this bench "
                                                 "writes it)")
    for row in report["rows"]:
        if "cuda_graphs" not in row:
            row.update(graph_fields_from_note(row.get("note", "")))
    text = "\n".join(markdown(report["meta"], report["rows"])) + "\n"  # before either file is rewritten
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    json_path.with_suffix(".md").write_text(text)
    return 0


def graph_fields_from_note(note: str) -> dict:
    """``compile_row``'s fields, read back from the note of a row written before the bench stored them (the note
    holds only torch's first reason: "CUDA graphs skipped: <reason> (+N more)")."""
    from ddvlm_core.model import skip_reason

    if "CUDA graphs recorded" in note:
        return {"cuda_graphs": "recorded", "cuda_graph_skips": []}
    skipped = re.search(r"CUDA graphs skipped: (.*?)(?: \(\+\d+ more\))?(?:;|$)", note)
    return {"cuda_graphs": "skipped", "cuda_graph_skips": [skip_reason(skipped.group(1))]} if skipped else {}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
