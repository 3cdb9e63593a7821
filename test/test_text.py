import pytest
import torch

from ddvlm_core.context import PromptBuilder, make_turns, speaker_token_names
from ddvlm_core.text import (TextEncoder, collate_prompts, load_backbone, load_tokenizer, mask_positions,
                             bucket_widths, pad_to_bucket, require_local_dir)


def test_h_text_is_the_final_hidden_state_at_the_mask_even_in_a_padded_batch(mpnet_ddvlm):
    model, tok = mpnet_ddvlm
    builder = PromptBuilder(tok)
    prompts = builder.build_all(make_turns([("Ross", "Hi."), ("Rachel", "What are you doing here so early?")]))
    ids, mask = collate_prompts([p.input_ids for p in prompts], tok.pad_token_id)
    assert ids.shape[0] == 2 and mask[0].sum() < mask[1].sum()  # the first row is padded
    with torch.no_grad():
        batched = model.text.encode(ids, mask)
        for row, prompt in enumerate(prompts):
            single = torch.tensor([prompt.input_ids])
            states = model.text.backbone(input_ids=single).last_hidden_state[0]
            torch.testing.assert_close(batched[row], states[prompt.mask_index], atol=1e-4, rtol=1e-4)
    assert batched.shape == (2, 768)


def test_pad_to_bucket_pads_to_the_next_multiple_up_to_the_cap_and_masks_the_padding():
    def widths(width, multiple, cap):
        ids, mask = pad_to_bucket(torch.full((2, width), 7), torch.ones(2, width, dtype=torch.long), multiple, cap, 1)
        assert (ids[:, :width] == 7).all() and (ids[:, width:] == 1).all()  # right-padded with the pad id
        assert (mask[:, :width] == 1).all() and (mask[:, width:] == 0).all()  # and masked out
        return ids.shape[1]

    assert [widths(w, 4, 511) for w in (1, 4, 5, 8)] == [4, 4, 8, 8]
    assert [widths(w, 64, 511) for w in (65, 128, 449, 500, 511)] == [128, 128, 511, 511, 511]
    assert widths(600, 64, 511) == 600  # wider than the cap: never cut
    assert bucket_widths(64, 511) == [64, 128, 192, 256, 320, 384, 448, 511]
    assert {widths(w, 64, 511) for w in range(1, 512)} == set(bucket_widths(64, 511))


def test_length_buckets_leave_h_text_unchanged_and_give_the_backbone_few_widths(mpnet_ddvlm):
    """What compile_text sets for CUDA graphs (on a GPU): the backbone sees 64-token buckets, h_text is the same."""
    model, tok = mpnet_ddvlm
    builder = PromptBuilder(tok)
    turns = make_turns([("Ross", "Hi."), ("Rachel", "What are you doing here so early?"), ("Ross", "Guess!")] * 8)
    prompts = builder.build_all(turns)[::5]
    seen = []
    hook = model.text.backbone.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[1]),
                                                         with_kwargs=True)
    try:
        with torch.no_grad():
            plain = [model.text.encode(*collate_prompts([p.input_ids], tok.pad_token_id)) for p in prompts]
            model.text.length_bucket = (64, 511)
            bucketed = [model.text.encode(*collate_prompts([p.input_ids], tok.pad_token_id)) for p in prompts]
    finally:
        model.text.length_bucket = None
        hook.remove()
    lengths = [len(p.input_ids) for p in prompts]
    assert seen[:len(prompts)] == lengths and len(set(lengths)) == len(prompts) > 3
    assert seen[len(prompts):] == [-(-n // 64) * 64 for n in lengths]
    for a, b in zip(plain, bucketed):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_mask_positions_takes_the_last_mask_and_refuses_rows_without_one():
    ids = torch.tensor([[0, 9, 4, 7, 4, 2], [0, 4, 2, 1, 1, 1]])
    assert mask_positions(ids, 4).tolist() == [4, 1]
    with pytest.raises(ValueError, match="mask token"):
        mask_positions(torch.tensor([[0, 5, 2]]), 4)


def test_roberta_path_from_a_local_dir_with_speaker_tokens(tiny_roberta_dir):
    tok = load_tokenizer(tiny_roberta_dir)
    assert type(tok).__name__.startswith("Roberta") and tok.mask_token == "<mask>"
    backbone = load_backbone(tiny_roberta_dir, tok)
    emb = backbone.get_input_embeddings().weight
    assert emb.shape[0] == len(tok) == 800 + 10
    base = load_tokenizer(tiny_roberta_dir, n_speakers=0)
    s3 = tok.convert_tokens_to_ids("<s3>")
    pieces = base.convert_tokens_to_ids(base.tokenize("<s3>"))  # byte-level BPE pieces of the base vocab
    torch.testing.assert_close(emb[s3], emb[pieces].mean(0))
    again = load_backbone(tiny_roberta_dir, load_tokenizer(tiny_roberta_dir)).get_input_embeddings().weight
    torch.testing.assert_close(emb, again, atol=0, rtol=0)  # deterministic, no random init
    encoder = TextEncoder(backbone, tok.mask_token_id).eval()
    prompt = PromptBuilder(tok).build(make_turns([("A", "Hello there"), ("B", "Oh no")]))
    ids, mask = collate_prompts([prompt.input_ids], tok.pad_token_id)
    out = encoder(ids, mask)
    assert out.logits.shape == (1, 7) and out.hidden.shape == (1, 32)


def test_new_speaker_token_embedding_is_the_mean_of_its_pieces(mpnet_path, mpnet_tokenizer, mpnet_ddvlm):
    model, _ = mpnet_ddvlm
    emb = model.text.backbone.get_input_embeddings().weight
    base = load_tokenizer(mpnet_path, n_speakers=0)
    for name in speaker_token_names(9):
        assert name not in base.get_vocab()
        pieces = base.convert_tokens_to_ids(base.tokenize(name))  # '<', 's', '##3', '>'
        torch.testing.assert_close(emb[mpnet_tokenizer.convert_tokens_to_ids(name)], emb[pieces].mean(0))


def test_a_backbone_with_pickled_weights_only_is_refused_not_unpickled(tiny_roberta_dir, tmp_path):
    """pytorch_model.bin is a pickle; transformers would load it; ddvlm never unpickles."""
    import os

    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in os.listdir(tiny_roberta_dir):
        if name != "model.safetensors":
            os.symlink(os.path.join(tiny_roberta_dir, name), pickled / name)
    torch.save(load_file(os.path.join(tiny_roberta_dir, "model.safetensors")), pickled / "pytorch_model.bin")
    tokenizer = load_tokenizer(str(pickled))  # tokenizer files are JSON and text
    with pytest.raises(ValueError, match=r"holds pickled weights \(pytorch_model.bin\) and no .safetensors"):
        load_backbone(str(pickled), tokenizer)
    (pickled / "model.safetensors").symlink_to(os.path.join(tiny_roberta_dir, "model.safetensors"))
    assert load_backbone(str(pickled), tokenizer) is not None  # both: the safetensors are read


def test_hub_names_are_refused_not_downloaded():
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        require_local_dir("roberta-large", "text backbone")
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_tokenizer("FacebookAI/roberta-large")


def test_prompts_longer_than_the_backbones_positions_are_refused_when_the_model_is_built(tiny_roberta_dir):
    from transformers import AutoConfig

    from ddvlm_core.model import DDVLM, DDVLMConfig
    from ddvlm_core.text import max_prompt_tokens

    backbone_config = AutoConfig.from_pretrained(tiny_roberta_dir)
    limit = max_prompt_tokens(backbone_config)
    assert limit == backbone_config.max_position_embeddings - backbone_config.pad_token_id - 1
    model, tokenizer = DDVLM.from_backbone(DDVLMConfig(text_backbone=tiny_roberta_dir, max_tokens=limit))
    backbone = model.text.backbone
    ids = torch.full((1, limit), tokenizer.convert_tokens_to_ids("a"))
    backbone(input_ids=ids, attention_mask=torch.ones_like(ids))  # the longest prompt it reads
    with pytest.raises((IndexError, RuntimeError)):  # one more token runs past the position embeddings: exact
        longer = torch.cat([ids, ids[:, :1]], dim=1)
        backbone(input_ids=longer, attention_mask=torch.ones_like(longer))
    with pytest.raises(ValueError, match=f"max_tokens {limit + 1} is longer than the backbone"):
        DDVLM.from_backbone(DDVLMConfig(text_backbone=tiny_roberta_dir, max_tokens=limit + 1))


def test_only_the_report_of_the_pooler_left_out_on_purpose_is_dropped_when_a_backbone_loads(
        tmp_path, tiny_roberta_dir):
    import logging
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers.utils import logging as hf_logging

    def reports_when_loading(extra: dict) -> list[str]:
        folder = tmp_path / f"backbone{len(extra)}"
        shutil.copytree(tiny_roberta_dir, folder)
        weights = load_file(folder / "model.safetensors")
        save_file({**weights, **extra}, folder / "model.safetensors")
        said = []
        handler = logging.Handler()
        handler.emit = lambda record: said.append(record.getMessage())
        logger = logging.getLogger("transformers.modeling_utils")
        logger.addHandler(handler)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_warning()  # an earlier test may have quieted transformers in this process
        try:
            load_backbone(str(folder), load_tokenizer(str(folder)))
        finally:
            hf_logging.set_verbosity(verbosity)
            logger.removeHandler(handler)
        return [s for s in said if "LOAD REPORT" in s]

    pooler = {"pooler.dense.weight": torch.zeros(32, 32), "pooler.dense.bias": torch.zeros(32)}
    assert reports_when_loading(pooler) == []  # built without a pooler on purpose: nothing to report
    other = reports_when_loading({**pooler, "classifier.weight": torch.zeros(7, 32)})
    assert len(other) == 1 and "classifier.weight" in other[0]  # anything else is still reported
    assert logging.getLogger("transformers.modeling_utils").filters == []  # the filter was only for the load
