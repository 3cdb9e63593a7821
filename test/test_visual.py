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


def test_an_embedder_module_with_pickled_weights_is_refused_not_unpickled(minilm_path, tmp_path):
    """A SentenceTransformer whose Dense module ships pytorch_model.bin (a pickle) only: sentence-transformers
    would torch.load it; ddvlm never unpickles."""
    import json
    import os

    model = tmp_path / "minilm-dense"
    model.mkdir()
    for name in os.listdir(minilm_path):
        if name != "modules.json":
            os.symlink(os.path.join(minilm_path, name), model / name)
    (model / "openvino").mkdir()  # as on the Hugging Face hub: other runtimes' files, not pickles, never read
    (model / "openvino" / "openvino_model.bin").write_bytes(b"\x00" * 64)
    (model / "modules.json").symlink_to(os.path.join(minilm_path, "modules.json"))
    assert CaptionEmbedder(str(model)).dim == 384
    (model / "modules.json").unlink()
    modules = json.loads(open(os.path.join(minilm_path, "modules.json")).read())
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": "2_Dense",
                    "type": "sentence_transformers.models.Dense"})
    (model / "modules.json").write_text(json.dumps(modules))
    (model / "2_Dense").mkdir()
    config = {"in_features": 384, "out_features": 384, "bias": True,
              "activation_function": "torch.nn.modules.linear.Identity"}
    (model / "2_Dense" / "config.json").write_text(json.dumps(config))
    dense = {f"linear.{k}": v for k, v in torch.nn.Linear(384, 384).state_dict().items()}
    torch.save(dense, model / "2_Dense" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"2_Dense' holds pickled weights \(pytorch_model.bin\) and no .safetensors"):
        CaptionEmbedder(str(model))
