import json
import re
from pathlib import Path

import pytest
import torch

from ddvlm_core.checkpoint import CheckpointError, load_checkpoint, read_manifest, save_checkpoint, sha256_file
from ddvlm_core.inference import EmotionRecognizer
from ddvlm_core.labels import LABELS
from ddvlm_core.model import DDVLM, DDVLMConfig

REPO = Path(__file__).resolve().parents[1]


def tiny_checkpoint(tmp_path, tiny_roberta_dir, seed=0):
    torch.manual_seed(seed)
    model, tok = DDVLM.from_backbone(DDVLMConfig(text_backbone=tiny_roberta_dir, text_dim=32))
    return model.eval(), tok, model.save(tmp_path / "ckpt")


def test_round_trip_with_hashes_labels_and_per_module_files(tmp_path, tiny_roberta_dir):
    model, _, directory = tiny_checkpoint(tmp_path, tiny_roberta_dir)
    manifest = read_manifest(directory)
    assert manifest["labels"] == list(LABELS) and manifest["format_version"] == 1
    assert set(manifest["modules"]) == {"text_head", "visual_head", "fusion"}
    for name, entry in manifest["modules"].items():
        assert sha256_file(directory / entry["file"]) == entry["sha256"]
    loaded, tok, _ = DDVLM.load(directory)
    for name, state in model.module_state_dicts().items():
        for key, value in loaded.module_state_dicts()[name].items():
            assert torch.equal(value, state[key]), (name, key)
    assert manifest["config"]["text_backbone"] == tiny_roberta_dir


def test_the_same_weights_save_to_the_same_bytes(tmp_path, tiny_roberta_dir):
    """A re-export of unchanged weights leaves the files and the manifest as they were (a committed checkpoint does
    not change in git, two runs that trained the same weights have the same hashes)."""
    model, _, directory = tiny_checkpoint(tmp_path, tiny_roberta_dir)
    first = (directory / "manifest.json").read_text()
    for _ in range(6):  # the metadata's order was random: 2 keys, 1 chance in 2 per save of another file
        model.save(directory)
        assert (directory / "manifest.json").read_text() == first


def test_predictions_survive_save_and_load(tmp_path, tiny_roberta_dir):
    model, tok, directory = tiny_checkpoint(tmp_path, tiny_roberta_dir, seed=3)
    dialogue = [("A", "I got the job!"), ("B", "No way, really?")]
    before = EmotionRecognizer(model, tok).predict(dialogue)
    after = EmotionRecognizer.from_checkpoint(directory, load_caption_embedder=False).predict(dialogue)
    assert before.probabilities == after.probabilities


def test_corrupt_tampered_or_missing_files_are_refused(tmp_path, tiny_roberta_dir):
    _, _, directory = tiny_checkpoint(tmp_path, tiny_roberta_dir)
    head = directory / "text_head.safetensors"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(directory)
    head.write_bytes(b"\x00" * 16)  # unreadable even with a matching hash
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["modules"]["text_head"]["sha256"] = sha256_file(head)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_checkpoint(directory, ["text_head"])
    (directory / "fusion.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing module file"):
        load_checkpoint(directory, ["fusion"])


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(labels=list(reversed(LABELS))), "label order"),
    (lambda m: m.update(format_version=99), "format_version"),
    (lambda m: m.update(format="something-else"), "not a ddvlm-checkpoint manifest"),
    (lambda m: m["config"].update(unknown_key=1), "bad config"),
    (lambda m: m["config"].update(text_dim=64), "do not fit"),
    (lambda m: m["config"].update(num_labels=5), "bad config in manifest .num_labels must be 7"),
    (lambda m: m["config"].update(caption_dim=64), "does not fit the model"),
    (lambda m: m["config"].update(max_tokens="511"), "bad config in manifest .max_tokens must be an integer"),
    (lambda m: m["config"].update(dropout=2.0), r"bad config in manifest .dropout must be a number in \[0, 1\)"),
    (lambda m: m["config"].update(lora=[16]), "bad config in manifest .lora must be a mapping"),
    (lambda m: m["config"].update(quantization={"kernel": "fast"}), "bad config in manifest .kernel must be one of"),
    (lambda m: m["config"].update(quantization={"bits": 4}), "bad config in manifest .*keyword argument 'bits'"),
    (lambda m: m["config"].update(text_backbone="/elsewhere/roberta-large"),
     "its backbone '/elsewhere/roberta-large' cannot be loaded here .FileNotFoundError"),
    (lambda m: m["modules"].update(text_head="text_head.safetensors"), "module 'text_head' must be an object with"),
    (lambda m: m["modules"]["text_head"].pop("sha256"), "module 'text_head' must be an object with a 'file' and"),
    (lambda m: m["modules"]["text_head"].update(file=5), "module 'text_head' must be an object with a 'file'"),
])
def test_mismatched_manifests_are_refused(tmp_path, tiny_roberta_dir, edit, message):
    _, _, directory = tiny_checkpoint(tmp_path, tiny_roberta_dir)
    manifest = json.loads((directory / "manifest.json").read_text())
    edit(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=message):
        DDVLM.load(directory)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_manifest(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="missing"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"\xff{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_save_checkpoint_writes_only_safetensors_and_json(tmp_path):
    save_checkpoint(tmp_path, {"a": {"w": torch.ones(2)}}, {"k": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "manifest.json"]


def test_nothing_is_ever_unpickled():
    """No unpickling call, and every model's from_pretrained reads safetensors only (transformers would otherwise
    torch.load a pytorch_model.bin; refused before, as test_text / test_visual show on such folders)."""
    pattern = re.compile(r"\btorch\.load\(|\bpickle\b|\bjoblib\b|weights_only")
    sources = {p: p.read_text(encoding="utf-8") for d in ("ddvlm_core", "ddvlm_ros", "training")
               for p in (REPO / d).rglob("*.py")}
    assert [str(p) for p, text in sources.items() if pattern.search(text)] == []
    loads = [(p, m.end()) for p, text in sources.items()
             for m in re.finditer(r"(Model|ForConditionalGeneration)\.from_pretrained\(\s*\n", text)]
    assert len(loads) == 2  # the text backbone, the Qwen2.5-VL captioner
    for p, at in loads:
        call = sources[p][at:sources[p].index("\n", sources[p].index("\n", at) + 1)]  # its next two lines
        assert "use_safetensors=True" in call, p


def test_loading_a_lora_checkpoint_warns_of_nothing_the_user_cannot_act_on(tmp_path, tiny_roberta_dir):
    import warnings

    from ddvlm_core.lora import apply_lora
    from ddvlm_core.model import DDVLM, DDVLMConfig

    model, _ = DDVLM.from_backbone(DDVLMConfig(text_backbone=tiny_roberta_dir, text_dim=32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_lora(model.text.backbone, {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["query", "value"]})
        warnings.warn("a warning of our own still shows", FutureWarning)
    said = [str(w.message) for w in caught]
    assert not [s for s in said if "is_gradient_checkpointing" in s]  # peft's use of a deprecated transformers API
    assert "a warning of our own still shows" in said


def test_a_lora_adapter_missing_a_tensor_is_refused_not_filled_with_a_fresh_one(tmp_path, tiny_roberta_dir):
    """A tensor the adapter's settings call for but its file lacks kept peft's fresh initialisation (a random
    lora_A under a trained lora_B), and the checkpoint loaded as another model without a word."""
    from safetensors.torch import load_file, save_file

    from ddvlm_core.lora import apply_lora
    from ddvlm_core.model import DDVLMConfig

    settings = {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["query", "value"], "layers": []}
    model, tok = DDVLM.from_backbone(DDVLMConfig(text_backbone=tiny_roberta_dir, text_dim=32, lora=settings))
    model.text.backbone = apply_lora(model.text.backbone, settings)
    model.save(tmp_path / "ckpt", ("text_head", "backbone_lora"))
    assert isinstance(DDVLM.load(tmp_path / "ckpt")[0], DDVLM)
    adapter = tmp_path / "ckpt" / "backbone_lora.safetensors"
    state = load_file(adapter)
    save_file({k: v for k, v in state.items() if not k.endswith("layer.1.attention.self.value.lora_A.weight")},
              adapter)
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    manifest["modules"]["backbone_lora"]["sha256"] = sha256_file(adapter)
    (tmp_path / "ckpt" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="LoRA adapter does not fit the backbone: .*lacks 1 of the tensors"):
        DDVLM.load(tmp_path / "ckpt")
