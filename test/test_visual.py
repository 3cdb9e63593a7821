import pytest
import torch

from ddvlm_core.visual import CaptionEmbedder, VisualHead


def test_real_sentence_bert_embeds_captions_meaningfully(caption_embedder):
    emb = caption_embedder.embed([
        "The person is raising both eyebrows and the mouth is open.",
        "Eyebrows are raised high and the mouth hangs open.",
        "A car is parked next to a tall building at night.",
    ])
    assert emb.shape == (3, 384) and caption_embedder.dim == 384
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb[0], emb[1], dim=0) > cos(emb[0], emb[2], dim=0) + 0.2
    torch.testing.assert_close(emb, caption_embedder.embed([
        "The person is raising both eyebrows and the mouth is open.",
        "Eyebrows are raised high and the mouth hangs open.",
        "A car is parked next to a tall building at night."]))
    assert caption_embedder.embed([]).shape == (0, 384)


def test_visual_head_exposes_h_visual_at_the_text_width():
    torch.manual_seed(0)
    out = VisualHead(384, 768).eval()(torch.randn(4, 384))
    assert out.logits.shape == (4, 7) and out.hidden.shape == (4, 768)


def test_missing_embedder_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="caption embedder"):
        CaptionEmbedder(str(tmp_path / "nope"))
