"""How much a checkpoint uses who speaks: WA-F1 on MELD test with the real speakers and with every turn given
to one speaker, and how alike its speaker tokens' embeddings are.

    python bench/speaker_tokens.py [--model-dir checkpoints/default] [--dialogues 0] [--out reports/speaker_tokens.md]

Each utterance is answered from its own dialogue context, as the node builds it. A LoRA checkpoint without
``lora_speaker_tokens`` keeps the speaker tokens' embeddings as initialised (the mean of their pieces). Writes
the Markdown report and JSON next to it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {"real speakers": lambda u: u.speaker, "every turn one speaker": lambda u: "user"}


def wa_f1_by_variant(recognizer, dialogues, batch: int = 8) -> dict:
    from ddvlm_core.labels import LABELS
    from ddvlm_core.metrics import metrics

    gold = [u.label for d in dialogues for u in d]
    out = {}
    for name, speaker in VARIANTS.items():
        preds = []
        for d in dialogues:
            turns = [(speaker(u), u.text) for u in d]
            contexts = [turns[: k + 1] for k in range(len(turns))]
            for i in range(0, len(contexts), batch):
                preds += [LABELS.index(p.top_label) for p in recognizer.predict_batch(contexts[i:i + batch])]
        out[name] = metrics(gold, preds)
    return out


def token_cosines(recognizer) -> dict:
    import torch

    from ddvlm_core.context import speaker_token_names

    ids = recognizer.tokenizer.convert_tokens_to_ids(speaker_token_names())
    weight = recognizer.model.text.backbone.get_input_embeddings().weight
    rows = torch.nn.functional.normalize(weight[ids].float(), dim=-1)
    cos = rows[1:] @ rows[1:].T  # <s1>..<s9>
    off = cos[~torch.eye(len(cos), dtype=torch.bool)]
    return {"min": round(off.min().item(), 4), "max": round(off.max().item(), 4)}


def main(argv=None) -> int:
    from ddvlm_core.cli import DEFAULT_CHECKPOINT
    from ddvlm_core.inference import EmotionRecognizer
    from ddvlm_core.meld import dialogues

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=str(DEFAULT_CHECKPOINT),
                    help="checkpoint folder (default: the embedded default, checkpoints/default)")
    ap.add_argument("--dialogues", type=int, default=0, help="the first N test dialogues (0: all 280)")
    ap.add_argument("--out", default=str(REPO / "reports" / "speaker_tokens.md"),
                    help="the Markdown report; its .json goes beside it (default: reports/speaker_tokens.md)")
    args = ap.parse_args(argv)
    recognizer = EmotionRecognizer.from_checkpoint(args.model_dir, load_caption_embedder=False)
    test = list(dialogues("test").values())[: args.dialogues or None]
    scores = wa_f1_by_variant(recognizer, test)
    cos = token_cosines(recognizer)
    result = {"command": "python bench/speaker_tokens.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
              "model": args.model_dir, "dialogues": len(test), "speaker_token_cosine_s1_s9": cos,
              "scores": {k: {m: v[m] for m in ("n", "wa_f1", "macro_f1", "accuracy")} for k, v in scores.items()}}
    lines = ["# Does the checkpoint use who speaks?", "", f"`{result['command']}`; model `{args.model_dir}`; "
             f"{len(test)} MELD test dialogues. Cosine between the embeddings of <s1>..<s9>: "
             f"{cos['min']:.2f} to {cos['max']:.2f}.", "", "| speakers given to the model | WA-F1 | macro F1 | "
             "accuracy | utterances |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['wa_f1']:.2f} | {v['macro_f1']:.2f} | {v['accuracy']:.2f} | {v['n']} |"
              for k, v in result["scores"].items()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
