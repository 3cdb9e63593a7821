import numpy as np
import pytest
import torch

from ddvlm_core.fusion import GATE_MAX, GATE_MIN, ResidualGatedFusion


def make(d=8, c=7, seed=0):
    torch.manual_seed(seed)
    fusion = ResidualGatedFusion(d, d, c, dropout=0.2).eval()
    h_t, h_v = torch.randn(5, d), torch.randn(5, d)
    z_t, z_v = torch.randn(5, c), torch.randn(5, c) * 2
    return fusion, h_t, z_t, h_v, z_v


def np_layernorm(x, ln):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * ln.weight.detach().numpy() + ln.bias.detach().numpy()


def lin(x, layer):
    return x @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()


def test_output_matches_the_equations_computed_independently():
    fusion, h_t, z_t, h_v, z_v = make()
    with torch.no_grad():
        fusion.alpha.fill_(0.7)
        out = fusion(h_t, z_t, h_v, z_v)
    ht, hv, zt, zv = (x.numpy().astype(np.float64) for x in (h_t, h_v, z_t, z_v))
    hv_p = lin(np.maximum(lin(np_layernorm(hv, fusion.visual_norm), fusion.w1), 0), fusion.w2)
    g = 1 / (1 + np.exp(-lin(np.concatenate([ht, hv_p, ht - hv_p, ht * hv_p], 1), fusion.w_gate)))
    g = np.clip(g, 0.05, 0.5)
    h_fused = (1 - g) * ht + g * hv_p
    delta = lin(np_layernorm(h_fused - ht, fusion.residual_norm), fusion.w_c)
    cos = (ht * hv_p).sum(1) / (np.linalg.norm(ht, axis=1) * np.linalg.norm(hv_p, axis=1))
    s_cos = ((1 + cos) / 2)[:, None]
    e = np.exp(zv - zv.max(1, keepdims=True))
    s_conf = (e / e.sum(1, keepdims=True)).max(1, keepdims=True)
    z = zt + 0.7 * g * s_cos * s_conf * delta
    np.testing.assert_allclose(out.logits.numpy(), z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.gate.numpy(), g, rtol=1e-5)


@pytest.mark.parametrize("bias, expected", [(100.0, GATE_MAX), (-100.0, GATE_MIN)])
def test_gate_is_clamped_to_its_range(bias, expected):
    fusion, h_t, z_t, h_v, z_v = make()
    with torch.no_grad():
        fusion.w_gate.weight.zero_()
        fusion.w_gate.bias.fill_(bias)
        out = fusion(h_t, z_t, h_v, z_v)
    assert torch.all(out.gate == expected)
    assert torch.all((out.s_cos >= 0) & (out.s_cos <= 1))
    assert torch.all((out.s_conf >= 1 / 7) & (out.s_conf <= 1))


def test_alpha_zero_and_missing_captions_give_the_text_logits_exactly():
    fusion, h_t, z_t, h_v, z_v = make()
    has_visual = torch.tensor([True, False, True, False, False])
    out = fusion(h_t, z_t, h_v, z_v, has_visual)
    assert torch.equal(out.logits[~has_visual], z_t[~has_visual])
    assert not torch.allclose(out.logits[has_visual], z_t[has_visual])
    with torch.no_grad():
        fusion.alpha.zero_()
    assert torch.equal(fusion(h_t, z_t, h_v, z_v).logits, z_t)


def test_alpha_is_learnable_from_0_3_and_confidence_is_detached():
    fusion, h_t, z_t, h_v, z_v = make()
    assert fusion.alpha.item() == pytest.approx(0.3)
    z_v.requires_grad_(True)
    fusion.train()
    fusion(h_t, z_t, h_v, z_v).logits.sum().backward()
    assert fusion.alpha.grad is not None and fusion.alpha.grad != 0
    assert z_v.grad is None  # s_conf scales the correction but is not trained through


def test_concat_fusion_is_one_linear_map_of_both_states_and_leaves_uncaptioned_rows_to_the_text():
    """Table 4's w/o Residual Fusion (ddvlm_core.fusion.ConcatFusion): z = W [h_t || h_v] + b, z = z_t without a
    caption; the model config and the training config name the same two fusions."""
    from ddvlm_core.fusion import FUSIONS, ConcatFusion
    from ddvlm_core.model import DDVLMConfig
    from training.config import FUSIONS as TRAINING_FUSIONS
    from training.config import TrainConfig

    torch.manual_seed(0)
    d, c = 6, 7
    fusion = ConcatFusion(d, d, c, dropout=0.2).eval()
    h_t, h_v, z_t, z_v = torch.randn(3, d), torch.randn(3, d), torch.randn(3, c), torch.randn(3, c)
    w, b = fusion.classifier.weight.detach().numpy(), fusion.classifier.bias.detach().numpy()
    expected = np.concatenate([h_t.numpy(), h_v.numpy()], axis=1) @ w.T + b
    out = fusion(h_t, z_t, h_v, z_v, torch.tensor([True, False, True]))
    np.testing.assert_allclose(out.logits[[0, 2]].detach().numpy(), expected[[0, 2]], rtol=1e-5, atol=1e-6)
    assert torch.equal(out.logits[1], z_t[1]) and out.gate is None
    assert TRAINING_FUSIONS == FUSIONS and DDVLMConfig(fusion="concat").fusion == "concat"
    for bad in (lambda: DDVLMConfig(fusion="sum"), lambda: TrainConfig(fusion="sum")):
        with pytest.raises(ValueError, match="fusion must be one of"):
            bad()
