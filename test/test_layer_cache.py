"""LoRA on the top layers with the frozen layers below cached (cache_frozen_layers): the split forward equals
the whole one, the cache is keyed and reused, and a run's scores are those of the checkpoint it exports."""
import copy

import pytest
import torch

from ddvlm_core.lora import apply_lora
from ddvlm_core.text import layers_only
from training.data import collate
from training.features import LayerStates, cached_layer_states, extract_layer_states


def prompts(tok, n=6):
    from ddvlm_core.context import PromptBuilder
    from training.data import build_examples

    return build_examples("dev", PromptBuilder(tok, 511), limit_dialogues=2)[:n]


def lora_text_encoder(text_encoder, layers):
    """A copy of ``text_encoder`` with LoRA on ``layers`` whose B matrices are not zero (adapters that matter)."""
    text = copy.deepcopy(text_encoder)
    text.backbone = apply_lora(text.backbone, {"r": 4, "alpha": 8, "dropout": 0.1, "layers": list(layers),
                                               "targets": ["q", "k", "v", "o", "query", "key", "value", "dense"]})
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in text.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return text.eval()


def tiny_text(tiny_roberta_dir):
    from ddvlm_core.model import DDVLM, DDVLMConfig

    torch.manual_seed(0)
    model, tok = DDVLM.from_backbone(DDVLMConfig(text_backbone=tiny_roberta_dir, text_dim=32))
    return model.text.eval(), tok


@pytest.mark.parametrize("backbone", ["tiny-roberta", "mpnet"])
def test_the_layers_above_a_cached_split_give_the_whole_forwards_h_text(backbone, request):
    if backbone == "mpnet":
        model, tok = request.getfixturevalue("mpnet_ddvlm")
        text, start = lora_text_encoder(model.text, [10, 11]), 10
    else:
        text, tok = tiny_text(request.getfixturevalue("tiny_roberta_dir"))
        text, start = lora_text_encoder(text, [1]), 1
    examples = prompts(tok)
    ids, mask, _ = collate(examples, tok.pad_token_id)
    with torch.no_grad():
        whole = text.encode(ids, mask)
        states = extract_layer_states(text, examples, tok.pad_token_id, start, batch_size=4, device="cpu")
        split = text.encode_from_layer(*states.batch(list(range(len(examples)))), start)
    torch.testing.assert_close(split, whole, atol=2e-5, rtol=1e-4)
    # the adapters take part: without them the top layers give other states
    with torch.no_grad(), text.backbone.disable_adapter():
        plain = text.encode_from_layer(*states.batch(list(range(len(examples)))), start)
    assert (plain - whole).abs().max() > 1e-3


def test_layers_only_puts_the_backbone_back_even_when_the_forward_fails(tiny_roberta_dir):
    text, _ = tiny_text(tiny_roberta_dir)
    embeddings, layers = text.backbone.embeddings, text.backbone.encoder.layer
    with pytest.raises(RuntimeError):
        with layers_only(text.backbone, 1):
            assert len(text.backbone.encoder.layer) == 1
            text.backbone(inputs_embeds=torch.zeros(1, 3, 5), attention_mask=torch.ones(1, 3))  # width 5, not 32
    assert text.backbone.embeddings is embeddings and text.backbone.encoder.layer is layers
    for start, stop in ((2, None), (0, 0), (1, 3), (-1, 1)):
        with pytest.raises(ValueError, match="the backbone has layers 0..1"):
            with layers_only(text.backbone, start, stop):
                pass
    with pytest.raises(ValueError, match="Linear has no encoder.layer list"):
        with layers_only(torch.nn.Linear(2, 2), 1):
            pass


def test_layer_states_batch_pads_each_prompts_tokens_and_keeps_its_mask_position():
    values = torch.arange(6 * 2, dtype=torch.float).reshape(6, 2)  # prompts of 1, 3 and 2 tokens
    states = LayerStates(values, torch.tensor([1, 3, 2]), torch.tensor([0, 2, 1]))
    x, mask, index = states.batch([2, 0])
    assert x.tolist() == [[[8, 9], [10, 11]], [[0, 1], [0, 0]]]
    assert mask.tolist() == [[1, 1], [1, 0]] and index.tolist() == [1, 0]


def test_states_are_cached_per_layer_and_read_back_instead_of_recomputed(tmp_path, tiny_roberta_dir, monkeypatch):
    import training.features as features

    text, tok = tiny_text(tiny_roberta_dir)
    examples = prompts(tok)
    logs = []
    first = cached_layer_states(text, examples, tok.pad_token_id, 1, tmp_path, tiny_roberta_dir, log=logs.append)
    assert len(logs) == 1 and "at layer 1" in logs[0]
    assert first.values.shape == (sum(len(e.input_ids) for e in examples), 32)

    def refuse(*_, **__):
        raise AssertionError("recomputed")

    monkeypatch.setattr(features, "extract_layer_states", refuse)
    again = cached_layer_states(text, examples, tok.pad_token_id, 1, tmp_path, tiny_roberta_dir, log=logs.append)
    assert torch.equal(again.values, first.values) and torch.equal(again.mask_index, first.mask_index)
    with pytest.raises(AssertionError, match="recomputed"):  # another layer, or other prompts: another file
        cached_layer_states(text, examples, tok.pad_token_id, 0, tmp_path, tiny_roberta_dir)
    with pytest.raises(AssertionError, match="recomputed"):
        cached_layer_states(text, examples[:3], tok.pad_token_id, 1, tmp_path, tiny_roberta_dir)


def test_a_run_on_cached_lower_layers_scores_what_its_checkpoint_predicts(tmp_path, tiny_roberta_dir):
    from safetensors.torch import load_file
    from test_training import tiny_cfg

    from ddvlm_core.metrics import metrics
    from ddvlm_core.model import DDVLM
    from training.evaluate import predict_examples
    from training.loop import build_data, run, text_stage
    from training.state import load_trainable_state

    cfg = tiny_cfg(tmp_path, tiny_roberta_dir, text_mode="lora", lora_layers="1", cache_frozen_layers="true",
                   lr=3e-3, epochs=2, bucket_megabatch=2)  # cached states batched anew each epoch
    logs = []
    best = run(cfg, log=logs.append)["stages"]["text"]["best"]
    assert sum("token states" in line for line in logs) == 3  # train, dev, test: extracted once each
    exported, tok, _ = DDVLM.load(tmp_path / "run" / "checkpoint")  # the adapter merged into the whole backbone
    exported.eval()
    # the loop's own logits (cached states, top layer, unmerged adapter) with the best weights
    model, _ = DDVLM.from_backbone(cfg.model_config())
    data = build_data(cfg, tok)
    stage = text_stage(cfg, model, tok, data, log=lambda *_: None)
    load_trainable_state(stage.student, load_file(tmp_path / "run" / "text" / "best.safetensors"))
    stage.student.eval()
    for split in ("dev", "test"):
        examples = data[split]
        preds = predict_examples(lambda ids, mask: exported(ids, mask).logits, examples, tok.pad_token_id)
        assert metrics([e.label for e in examples], preds)["confusion"] == best[split]["confusion"]
        idx = list(range(len(examples)))
        with torch.no_grad():
            ids, mask, _ = collate(examples, tok.pad_token_id)
            torch.testing.assert_close(stage.logits(stage.student, split, idx), exported(ids, mask).logits,
                                       atol=2e-5, rtol=1e-4)
    logs.clear()
    run(tiny_cfg(tmp_path / "seed1", tiny_roberta_dir, text_mode="lora", lora_layers="1", cache_frozen_layers="true",
                 lr=3e-3, epochs=1, seed=1, feature_cache=str(tmp_path / "features")), log=logs.append)
    assert not any("token states" in line for line in logs)  # another seed reads the cache


@pytest.mark.parametrize("over", [{"text_mode": "lora"}, {"text_mode": "full", "lora_layers": "2"},
                                  {"text_mode": "lora", "lora_layers": "0,3"}])
def test_caching_frozen_layers_needs_lora_above_layer_zero(tmp_path, tiny_roberta_dir, over):
    from test_training import tiny_cfg

    with pytest.raises(ValueError, match="cache_frozen_layers needs text_mode: lora with lora_layers above layer 0"):
        tiny_cfg(tmp_path, tiny_roberta_dir, cache_frozen_layers="true", **over)
