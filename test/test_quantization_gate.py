"""Accuracy gate that CI runs: the shipped default, quantized (WOQ INT8), on a fixed slice of MELD dev
stays within 1 WA-F1 point of FP32 on the same slice."""
import copy

from ddvlm_core.cli import DEFAULT_CHECKPOINT
from ddvlm_core.context import PromptBuilder
from ddvlm_core.metrics import metrics
from ddvlm_core.model import DDVLM
from ddvlm_core.quantization import WOQConfig
from training.data import build_examples
from training.evaluate import predict_examples

SLICE = 200  # the first 200 utterances of MELD dev (dialogues 0..~20), fixed


def predictions(text_encoder, examples, pad_id):
    return predict_examples(lambda ids, mask: text_encoder(ids, mask).logits, examples, pad_id).tolist()


def test_quantized_default_stays_within_one_point_of_fp32_on_a_dev_slice():
    model, tok, _ = DDVLM.load(DEFAULT_CHECKPOINT)
    examples = build_examples("dev", PromptBuilder(tok, model.config.max_tokens))[:SLICE]
    gold = [e.label for e in examples]
    fp32 = metrics(gold, predictions(model.text, examples, tok.pad_token_id))
    quantized = copy.deepcopy(model).quantize(WOQConfig()).eval()
    woq = metrics(gold, predictions(quantized.text, examples, tok.pad_token_id))
    assert abs(fp32["wa_f1"] - woq["wa_f1"]) <= 1.0, (fp32["wa_f1"], woq["wa_f1"])
