"""WOQ INT8 (paper Section 3.7): the equations, the transform, the kernel check, storage."""
import copy

import pytest
import torch
from torch import nn

from ddvlm_core.checkpoint import CheckpointError
from ddvlm_core.context import PromptBuilder, make_turns
from ddvlm_core.model import DDVLM
from ddvlm_core.quantization import (Int8Embedding, Int8WeightOnlyLinear, WOQConfig, awq_search, check_int8_kernel,
                                     collect_activation_stats, dequantize_weight, quantize_, quantize_weight,
                                     weight_bytes)
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
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda x, w, s: torch.zeros(x.shape[0], w.shape[0], dtype=x.dtype))
    with pytest.raises(RuntimeError, match="refusing to run"):
        check_int8_kernel("cpu", isolated=False)

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_without_the_kernel_is_a_clear_error_not_a_crash():
    with pytest.raises(RuntimeError, match="unavailable on cuda"):
        check_int8_kernel("cuda")  # runs in a child process first


def test_int8_layer_matches_the_dequantized_equation_on_both_kernels():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    fast = Int8WeightOnlyLinear.from_linear(lin, WOQConfig())
    ref = Int8WeightOnlyLinear.from_linear(lin, WOQConfig(kernel="dequant"))
    expected = x @ dequantize_weight(*quantize_weight(lin.weight)).T + lin.bias
    torch.testing.assert_close(ref(x), expected, atol=1e-5, rtol=1e-5)
    assert sqnr_db(expected, fast(x)) > 35  # bf16 activations on CPU
    assert sqnr_db(lin(x), fast(x)) > 30


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
