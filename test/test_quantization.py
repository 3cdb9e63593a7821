"""WOQ INT8 (paper Section 3.7): the equations, the transform, the kernel check, storage."""
import copy
import types

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ddvlm_core.checkpoint import CheckpointError
from ddvlm_core.context import PromptBuilder, make_turns
from ddvlm_core.model import DDVLM
from ddvlm_core.quantization import (Int8Embedding, Int8WeightOnlyLinear, WOQConfig, awq_input_scale, awq_search,
                                     check_int8_kernel, collect_activation_stats, compute_dtype, cpu_has_fast_bf16,
                                     dequantize_weight, quantize_, quantize_weight, resolve_kernel, weight_bytes)
from ddvlm_core.text import collate_prompts


def sqnr_db(ref, q):
    ref, q = ref.detach(), q.detach()
    return float(20 * torch.log10(ref.norm() / (ref - q).norm()))


def test_per_channel_error_bound_zero_rows_and_outliers():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    w[3] = 0.0  # an all-zero row
    w[5, 7] = 80.0  # an outlier only widens its own row's scale
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and s.shape == (16,) and q.abs().max() <= 127
    assert s[3] == 1.0 and torch.all(q[3] == 0)
    assert s[5] == pytest.approx(80.0 / 127)
    err = (w - dequantize_weight(q, s)).abs()
    assert torch.all(err <= s[:, None] / 2 + 1e-6)  # |W - W^| <= s_j / 2 elementwise
    assert s[4] == pytest.approx(w[4].abs().max().item() / 127)


def test_known_answer_kernel_check_and_a_broken_kernel_is_refused(monkeypatch):
    check_int8_kernel("cpu")  # in a child process first, then here
    check_int8_kernel("cpu", WOQConfig(kernel="dequant"))
    check_int8_kernel("cpu", WOQConfig(kernel="decompress"))
    monkeypatch.setattr(torch, "_weight_int8pack_mm",
                        lambda x, w, s: torch.zeros(x.shape[0], w.shape[0], dtype=x.dtype))
    with pytest.raises(RuntimeError, match="refusing to run"):
        check_int8_kernel("cpu", WOQConfig(kernel="int8pack"), isolated=False)
    monkeypatch.setattr(torch.nn.functional, "linear",
                        lambda x, w, b=None: torch.ones(x.shape[0], w.shape[0], dtype=x.dtype))
    with pytest.raises(RuntimeError, match="refusing to run"):
        check_int8_kernel("cpu", WOQConfig(kernel="decompress"), isolated=False)


def test_auto_kernel_is_decompress_in_the_dtype_the_device_computes_natively(monkeypatch):
    from ddvlm_core import quantization

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_kernel("auto", cpu) == resolve_kernel("auto", cuda) == "decompress"
    assert resolve_kernel("int8pack", cpu) == "int8pack"
    assert compute_dtype(cpu) == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    for units, decompress_dtype in ((("AMX-BF16",), torch.bfloat16), ((), torch.float32)):
        monkeypatch.setattr(quantization, "_CPU_BF16_UNITS", units)  # a CPU with / without native bf16
        assert compute_dtype(cpu) == compute_dtype(cpu, "auto", "decompress") == decompress_dtype
        assert compute_dtype(cpu, "auto", "int8pack") == torch.bfloat16  # its float32 path is a slow loop
        assert compute_dtype(cuda) == torch.float16
        assert compute_dtype(cpu, "float16") == torch.float16  # an explicit dtype is kept
    with pytest.raises(ValueError, match="kernel must be one of"):
        WOQConfig(kernel="fast")
    with pytest.raises(TypeError, match="tuple of layer names"):
        WOQConfig(keep_float="head")  # matched per character, it would keep almost every layer float
    assert WOQConfig(keep_float=("head",)).keep_float == ("head",)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_without_the_kernel_is_a_clear_error_not_a_crash():
    with pytest.raises(RuntimeError, match="unavailable on cuda"):
        check_int8_kernel("cuda")  # runs in a child process first


@pytest.mark.parametrize("kernel", ["int8pack", "decompress"])
def test_int8_layer_matches_the_dequantized_equation_on_every_kernel(kernel):
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    fast = Int8WeightOnlyLinear.from_linear(lin, WOQConfig(kernel=kernel))
    ref = Int8WeightOnlyLinear.from_linear(lin, WOQConfig(kernel="dequant"))
    w_hat = dequantize_weight(*quantize_weight(lin.weight))
    expected = x @ w_hat.T + lin.bias
    torch.testing.assert_close(ref(x), expected, atol=1e-5, rtol=1e-5)
    y = fast(x)
    assert y.dtype == torch.float32 and y.shape == (3, 5, 48)
    assert sqnr_db(expected, y) > 35  # bf16 activations on CPU (or fp32 for decompress without native bf16)
    assert sqnr_db(lin(x), y) > 30
    # the same equation with the activations rounded to the compute dtype first: only the accumulation order differs
    dt = compute_dtype(torch.device("cpu"), "auto", kernel)
    assert sqnr_db(x.to(dt).float() @ w_hat.T + lin.bias, y) > 45
    no_bias = nn.Linear(64, 48, bias=False)
    q_no_bias = Int8WeightOnlyLinear.from_linear(no_bias, WOQConfig(kernel=kernel))
    assert q_no_bias.bias is None
    assert sqnr_db(x @ dequantize_weight(*quantize_weight(no_bias.weight)).T, q_no_bias(x)) > 35


def test_a_compiled_int8pack_layer_gives_the_eager_result():
    """inductor's own lowering of torch._weight_int8pack_mm fails on a scale cast inside the graph (torch 2.13:
    "LoweringException: AssertionError: <class 'torch._inductor.ir.Pointwise'>"); compiled, the layer calls the
    kernel as an opaque op instead, on the same bf16 inputs."""
    torch.manual_seed(0)
    layer = Int8WeightOnlyLinear.from_linear(nn.Linear(64, 48), WOQConfig(kernel="int8pack"))
    x = torch.randn(2, 5, 64)
    torch._dynamo.reset()
    with torch.inference_mode():
        torch.testing.assert_close(torch.compile(layer)(x), layer(x), atol=1e-5, rtol=1e-5)


def test_decompress_scratch_is_shared_by_layers_and_private_to_each_thread():
    import threading

    torch.manual_seed(0)
    layers = [Int8WeightOnlyLinear.from_linear(nn.Linear(256, 128), WOQConfig(kernel="decompress")) for _ in range(2)]
    x = torch.randn(16, 256)
    with torch.inference_mode():  # the scratch is created in inference mode ...
        first = [layer(x) for layer in layers]
    assert not torch.equal(first[0], first[1])
    assert torch.equal(layers[0](x), first[0])  # ... and still writable outside it
    results, errors = {i: [] for i in range(2)}, []

    def run(i):
        try:
            for _ in range(50):
                results[i].append(layers[i](x))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(2):
        assert all(torch.equal(y, first[i]) for y in results[i])  # no thread saw the other's weight
    x.requires_grad_(True)  # autograd keeps its own copy of the weight, so backward sees the right one
    loss = layers[0](x).sum() + layers[1](x).sum()
    loss.backward()
    w_sum = sum(dequantize_weight(m.weight, m.weight_scale).sum(0) for m in layers)
    assert sqnr_db(w_sum.expand_as(x), x.grad) > 40


def test_transform_replaces_linears_in_place_and_keeps_layernorm_fp32(mpnet_ddvlm):
    model, tok = mpnet_ddvlm
    q = copy.deepcopy(model.text)
    n_linear = sum(type(m) is nn.Linear for m in q.modules())
    before = weight_bytes(q)
    assert quantize_(q, WOQConfig()) is q
    assert sum(type(m) is nn.Linear for m in q.modules()) == 0
    assert sum(isinstance(m, Int8WeightOnlyLinear) for m in q.modules()) == n_linear
    assert any(isinstance(m, Int8Embedding) for m in q.modules())
    assert all(p.dtype == torch.float32 for m in q.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())
    assert weight_bytes(q) <= 0.26 * before
    prompts = PromptBuilder(tok).build_all(make_turns([("Ross", "I got the job!"), ("Rachel", "Oh my god, really?")]))
    ids, mask = collate_prompts([p.input_ids for p in prompts], tok.pad_token_id)
    with torch.no_grad():
        h_ref, h_q = model.text.encode(ids, mask), q.encode(ids, mask)
    assert sqnr_db(h_ref, h_q) > 20  # real MPNet inputs


def test_awq_lite_never_does_worse_than_plain_on_outlier_channels():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    act = torch.ones(32)
    act[:2] = 50.0  # two salient input channels
    x = torch.randn(256, 32) * act
    scale = awq_search(lin, act)
    plain = Int8WeightOnlyLinear.from_linear(lin, WOQConfig(kernel="dequant"))
    awq = Int8WeightOnlyLinear.from_linear(lin, WOQConfig(kernel="dequant", awq_lite=True), scale)
    ref = lin(x)
    assert (awq(x) - ref).pow(2).mean() <= (plain(x) - ref).pow(2).mean() + 1e-9
    stats = collect_activation_stats(nn.Sequential(lin), lambda: nn.Sequential(lin)(x))
    torch.testing.assert_close(stats["0"], x.abs().mean(0))
    seq = nn.Sequential(lin)
    peak = collect_activation_stats(seq, lambda: (seq(x[:5]), seq(x[5:])), reduce="max")  # across batches
    torch.testing.assert_close(peak["0"], x.abs().amax(0))
    with pytest.raises(ValueError, match="reduce"):
        collect_activation_stats(seq, lambda: None, reduce="median")


def test_awq_layers_are_built_on_their_weights_device_even_without_calibration():
    """The H100 run of bench row woq_awq failed with 'found at least two devices, cuda:0 and cpu': the visual
    head and the fusion have no calibration statistics (only the text encoder is calibrated), and their all-ones
    scale was made on the CPU. The meta device stands in for the GPU: mixing it with a CPU tensor fails the same
    way."""
    layer = nn.Linear(64, 8, device="meta")
    with pytest.raises(RuntimeError, match="device"):
        layer.weight * torch.ones(64)[None, :]  # what from_linear did with a CPU scale
    scale = awq_input_scale(layer, "not.calibrated", {})
    assert scale.device.type == "meta" and scale.shape == (64,)
    quantized = Int8WeightOnlyLinear.from_linear(layer, WOQConfig(awq_lite=True), torch.ones(64))  # a CPU scale
    assert {t.device.type for t in [*quantized.buffers(), *quantized.parameters()]} == {"meta"}
    torch.manual_seed(0)
    real = nn.Linear(32, 16)
    act = torch.ones(32)
    act[:2] = 50.0
    torch.testing.assert_close(awq_input_scale(real, "0", {"0": act}), awq_search(real, act))
    assert torch.equal(awq_input_scale(real, "other", {"0": act}), torch.ones(32))


def test_quantized_checkpoint_reloads_bit_identically_and_refuses_tampering(tmp_path, tiny_roberta_dir):
    from ddvlm_core.model import DDVLMConfig

    torch.manual_seed(0)
    model, tok = DDVLM.from_backbone(DDVLMConfig(text_backbone=tiny_roberta_dir, text_dim=32))
    model.quantize(WOQConfig()).eval()
    directory = model.save(tmp_path / "q", ("text_head", "visual_head", "fusion", "backbone"))
    loaded, _, manifest = DDVLM.load(directory)
    assert manifest["config"]["quantization"]["method"] == "woq-int8"
    prompt = PromptBuilder(tok).build(make_turns([("A", "Hello there"), ("B", "Oh no")]))
    ids, mask = collate_prompts([prompt.input_ids], tok.pad_token_id)
    emb = torch.randn(1, 384)
    with torch.no_grad():
        a = model(ids, mask, emb, torch.tensor([True])).logits
        b = loaded(ids, mask, emb, torch.tensor([True])).logits
    assert torch.equal(a, b)
    backbone = directory / "backbone.safetensors"
    data = bytearray(backbone.read_bytes())
    data[len(data) // 2] ^= 0x01
    backbone.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        DDVLM.load(directory)


def test_compile_modes_are_checked_and_cuda_graph_buckets_are_only_for_a_gpu(tiny_text_checkpoint):
    from ddvlm_core.model import DDVLM

    model, _, _ = DDVLM.load(tiny_text_checkpoint)
    with pytest.raises(ValueError, match="compile mode"):
        model.compile_text("turbo")
    model.compile_text("reduce-overhead")  # compiles lazily, at the first call
    assert model.text.backbone._compiled_call_impl is not None
    assert model.text.length_bucket is None  # on a CPU: no CUDA graphs, so no padding to buckets


def test_cudagraphs_mode_traces_the_woq_backbone_without_inductor_and_matches_eager(tiny_text_checkpoint):
    """compile_mode cudagraphs (no Triton): dynamo's cudagraphs backend; on a CPU it runs the traced graph as it
    is (CUDA graphs are for CUDA tensors), so its outputs equal eager's, bucket padding or not."""
    from torch._dynamo.utils import counters

    from ddvlm_core.model import DDVLM

    model, tok, _ = DDVLM.load(tiny_text_checkpoint)
    model.quantize(WOQConfig(kernel="dequant"))  # a kernel every CPU has
    ids = torch.randint(5, 60, (2, 21))
    ids[:, -2] = tok.mask_token_id
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.inference_mode():
        eager = model.text(ids, mask).logits
    torch._dynamo.reset()
    counters.clear()
    model.compile_text("cudagraphs")
    assert model.text.length_bucket is None
    with torch.inference_mode():
        compiled = model.text(ids, mask).logits
        model.text.length_bucket = (8, 40)  # as on a GPU: padded to 24 tokens, the padding masked out
        bucketed = model.text(ids, mask).logits
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo traced it
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
    torch.testing.assert_close(bucketed, eager, rtol=0, atol=1e-4)


def test_cudagraphs_mode_on_a_gpu_compiles_each_bucket_width_as_a_static_graph(tiny_text_checkpoint):
    """On the H100 the cudagraphs backend with dynamic shapes recorded the first width's graph and failed on the
    next ('The size of tensor a (64) must match the size of tensor b (128)'; pytorch/pytorch#131009). On a GPU
    that mode now compiles one static graph per width for single prompts; batches run eager. Run here with the
    GPU's settings: a graph per bucket width, reused when a width comes back, none for a batch, outputs equal
    to eager; off a GPU every length shares a dynamic graph."""
    from torch._dynamo.utils import counters

    from ddvlm_core.model import DDVLM, compile_options

    assert compile_options("cudagraphs", on_gpu=True) == {"backend": "cudagraphs", "dynamic": False}
    assert compile_options("cudagraphs", on_gpu=False)["dynamic"] is True
    assert compile_options("reduce-overhead", on_gpu=True) == {"mode": "reduce-overhead", "dynamic": True}
    model, tok, _ = DDVLM.load(tiny_text_checkpoint)
    model.eval()
    batches = []
    for rows, width in ((1, 21), (1, 30), (3, 21), (1, 19)):  # buckets of 8: 24, 32, a batch at 24, 24 again
        ids = torch.randint(5, 60, (rows, width))
        ids[:, -2] = tok.mask_token_id
        batches.append((ids, torch.ones_like(ids)))
    with torch.inference_mode():
        eager = [model.text(*b).logits for b in batches]

    def graphs_for(on_gpu, bucket):
        torch._dynamo.reset()
        counters.clear()
        options = compile_options("cudagraphs", on_gpu)
        model.text.backbone.compile(**options)
        model.text.length_bucket = bucket
        model.text.compiled_batch_sizes = None if options["dynamic"] else (1,)  # as compile_text sets it
        with torch.inference_mode():
            for batch, reference in zip(batches, eager):
                torch.testing.assert_close(model.text(*batch).logits, reference, rtol=0, atol=1e-4)
        return counters["stats"]["unique_graphs"]

    # widths 24 and 32 at batch 1; the batch ran eager (dynamic shapes: 1 graph; a compiled batch: 3)
    assert graphs_for(on_gpu=True, bucket=(8, 40)) == 2
    # off a GPU every length shares a graph: one for single prompts (dynamo specialises size-1 dims), one for batches
    assert graphs_for(on_gpu=False, bucket=None) == 2


def old_transformers_position_bias(self, x, position_ids=None, num_buckets=32):
    """transformers 5.17's MPNetEncoder.compute_position_bias (the lent GPU machine's; found in its public
    source): the positions are made on the CPU, the buckets moved to x's device afterwards."""
    bsz, qlen, klen = x.size(0), x.size(1), x.size(1)
    context_position = torch.arange(qlen, dtype=torch.long)[:, None]
    memory_position = torch.arange(klen, dtype=torch.long)[None, :]
    rp_bucket = self.relative_position_bucket(memory_position - context_position, num_buckets=num_buckets)
    rp_bucket = rp_bucket.to(x.device)
    values = self.relative_attention_bias(rp_bucket).permute([2, 0, 1]).unsqueeze(0)
    return values.expand((bsz, -1, qlen, klen)).contiguous()


class CpuTensorLog(TorchDispatchMode):
    """The ops that return a CPU tensor while a model runs on the meta device: what CUDA graphs refuse to
    record ("skipping cudagraphs due to cpu device")."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tree_leaves(out)):
            self.ops.append(str(func))
        return out


def test_mpnet_position_bias_is_made_on_the_inputs_device_so_cuda_graphs_can_record_it(mpnet_path):
    """The H100 run skipped CUDA graphs in compile_mode cudagraphs: "cpu device (arange_4)", MPNet's relative
    positions made on the CPU by transformers 5.17. compile_text gives each MPNet encoder a device-local
    position bias with the same values, here checked on the real architecture at tiny sizes."""
    from transformers import MPNetConfig, MPNetModel

    from ddvlm_core.model import DDVLM, DDVLMConfig
    from ddvlm_core.text import keep_position_bias_on_device, position_bias_on_input_device

    config = MPNetConfig.from_pretrained(mpnet_path)
    config.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    torch.manual_seed(0)
    encoder = MPNetModel(config, add_pooling_layer=False).eval().encoder
    x = torch.randn(2, 300, 32)  # past MPNet's max_distance of 128 positions: the log-spaced buckets too
    ours = position_bias_on_input_device(encoder, x)
    assert ours.shape == (2, 2, 300, 300)
    torch.testing.assert_close(ours, encoder.compute_position_bias(x), rtol=0, atol=0)
    torch.testing.assert_close(ours, old_transformers_position_bias(encoder, x), rtol=0, atol=0)
    shifted = torch.arange(300).expand(2, -1) + 5  # explicit positions: only their differences count
    torch.testing.assert_close(position_bias_on_input_device(encoder, x, shifted), ours, rtol=0, atol=0)

    with torch.device("meta"):
        meta_model = MPNetModel(config, add_pooling_layer=False).eval()
    meta_model.encoder.compute_position_bias = types.MethodType(old_transformers_position_bias, meta_model.encoder)
    ids = torch.ones(1, 40, dtype=torch.long, device="meta")

    def cpu_ops():
        with CpuTensorLog() as log, torch.no_grad():
            meta_model(input_ids=ids)  # no mask: transformers checks a given one with .item(), not on meta
        return log.ops

    # the old code makes CPU tensors, and this log sees them
    assert cpu_ops()[:2] == ["aten.arange.default", "aten.unsqueeze.default"]
    assert keep_position_bias_on_device(meta_model) == 1
    assert cpu_ops() == []
    model, _ = DDVLM.from_backbone(DDVLMConfig())  # the embedded MPNet: compile_text installs it
    model.compile_text("cudagraphs")
    assert model.text.backbone.encoder.compute_position_bias.__func__ is position_bias_on_input_device


def test_roberta_keeps_its_own_position_code(tiny_roberta_dir):
    from ddvlm_core.text import keep_position_bias_on_device, load_backbone, load_tokenizer

    backbone = load_backbone(tiny_roberta_dir, load_tokenizer(tiny_roberta_dir))
    assert keep_position_bias_on_device(backbone) == 0


def test_why_cuda_graphs_were_not_recorded_is_caught_from_torch_and_worded(tiny_text_checkpoint):
    """torch runs a compiled graph without CUDA graphs when it must (here: CPU tensors) and only logs why; the
    recognizer keeps the reason from its warm-up, and the node / bench say "recorded" or "skipped: why"."""
    from ddvlm_core.inference import EmotionRecognizer
    from ddvlm_core.model import cuda_graph_note

    recognizer = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint)
    torch._dynamo.reset()
    recognizer.model.compile_text("cudagraphs")
    recognizer.warm_up()
    skips = recognizer.cuda_graph_skips  # torch's own words, once per graph: one for batch 1, one for batches
    assert len(skips) == len(set(skips)) >= 1 and all(r.startswith("cpu device (") for r in skips)
    assert cuda_graph_note("cudagraphs", "cuda:0", skips) == f"CUDA graphs skipped: {skips[0]}" + (
        f" (+{len(skips) - 1} more)" if len(skips) > 1 else "")
    assert cuda_graph_note("cudagraphs", "cuda", ["a", "b", "c"]) == "CUDA graphs skipped: a (+2 more)"
    assert cuda_graph_note("reduce-overhead", "cuda", []) == "CUDA graphs recorded"
    assert cuda_graph_note("default", "cuda", []) == ""
    assert cuda_graph_note("cudagraphs", "cpu", skips) == "no CUDA graphs on cpu (they are recorded on a GPU only)"
    eager = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint)
    eager.warm_up()
    assert eager.cuda_graph_skips == []  # nothing compiled: nothing skipped
    import logging

    from torch._dynamo.utils import counters

    from ddvlm_core.model import CUDA_GRAPH_SKIP_LOGS, NO_REASON, cuda_graph_skips

    with cuda_graph_skips() as other:
        logging.getLogger(CUDA_GRAPH_SKIP_LOGS[1]).warning("a perf hint that is not a CUDA-graph skip")
    assert other == []
    with cuda_graph_skips() as gpu_words:  # torch 2.11's warning on the H100, stack trace after "Found from"
        logging.getLogger(CUDA_GRAPH_SKIP_LOGS[0]).warning(
            "skipping cudagraphs due to cpu device (arange_4). Found from : \n   File \"modeling_mpnet.py\", line 1")
    assert gpu_words == ["cpu device (arange_4)"]
    with cuda_graph_skips() as silent:  # a torch that counts a skip under a logger name we do not know
        counters["inductor"]["cudagraph_skips"] += 1
    assert silent == [NO_REASON]


def test_compiled_woq_model_matches_eager_keeps_int8_weights_and_compiles_once(tiny_text_checkpoint):
    """torch.compile of a WOQ model: the widening is traced (no scratch) and fused; after warm_up, prompts of
    other lengths and batch sizes reuse the compiled code (dynamic shapes) instead of compiling again."""
    from torch._dynamo.utils import counters

    from ddvlm_core.inference import EmotionRecognizer

    eager = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint)
    eager.model.quantize(WOQConfig(kernel="decompress"))
    compiled = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint)
    compiled.model.quantize(WOQConfig(kernel="decompress")).compile_text()
    torch._dynamo.reset()
    counters.clear()
    assert compiled.warm_up() > 0
    frames_after_warm_up = counters["stats"]["unique_graphs"]
    assert frames_after_warm_up >= 1  # it did compile
    dialogues = [[("Ross", "I got the job!")],
                 [("Ross", "I got the job!"), ("Rachel", "Oh my god, really? That is amazing news, Ross!")],
                 [("Joey", "How you doin'?")] * 7]
    for batch in ([dialogues[0]], [dialogues[1]], dialogues):
        for a, b in zip(eager.predict_batch(batch), compiled.predict_batch(batch)):
            assert max(abs(p - q) for p, q in zip(a.probabilities, b.probabilities)) < 2e-3
    assert counters["stats"]["unique_graphs"] == frames_after_warm_up  # no recompilation
    no_mask = torch.full((1, 12), 5, dtype=torch.long)
    with pytest.raises(ValueError, match="mask token"), torch.inference_mode():  # still checked, not a crash
        compiled.model.text(no_mask, torch.ones_like(no_mask))
    linears = [m for m in compiled.model.text.modules() if isinstance(m, Int8WeightOnlyLinear)]
    assert linears and all(m.weight.dtype == torch.int8 for m in linears)
    assert set(compiled.model.text.state_dict()) == set(eager.model.text.state_dict())
