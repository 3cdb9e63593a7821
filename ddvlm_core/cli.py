"""ddvlm-predict: emotion distributions for a dialogue, from the command line.

    ddvlm-predict --meld test:0                      # every utterance of MELD test dialogue 0
    ddvlm-predict "Ross: I got the job!" "Rachel: No way!"   # "speaker: text" per argument
    ddvlm-predict --checkpoint DIR --caption "She is raising her eyebrows." "A: hi" "B: hello"

Uses the embedded default checkpoint (checkpoints/default) unless --checkpoint is given. Without any
trained checkpoint it runs the embedded MPNet backbone with an UNTRAINED head and says so on every line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddvlm_core.assets import shipped
from ddvlm_core.checkpoint import CheckpointError
from ddvlm_core.context import has_text
from ddvlm_core.labels import LABELS

DEFAULT_CHECKPOINT = shipped("checkpoints/default")


def parse_turn(arg: str) -> tuple[str | None, str]:
    """'speaker: text' -> (speaker, text); a line without ': ' has no speaker."""
    speaker, sep, text = arg.partition(": ")
    return (speaker.strip(), text) if sep else (None, arg)


def quiet_transformers() -> None:
    """No per-weight load reports or progress bars on the command line."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_recognizer(checkpoint: str | None):
    import torch

    from ddvlm_core.inference import EmotionRecognizer
    from ddvlm_core.model import DDVLM, DDVLMConfig

    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    if (path / "manifest.json").is_file():
        return EmotionRecognizer.from_checkpoint(path), str(path)
    if checkpoint:
        raise CheckpointError(f"{checkpoint}: not a ddvlm checkpoint (no manifest.json)")
    torch.manual_seed(0)
    model, tokenizer = DDVLM.from_backbone(DDVLMConfig())
    return EmotionRecognizer(model, tokenizer, name="untrained"), "UNTRAINED head (no trained checkpoint yet)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ddvlm-predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("turns", nargs="*", help="utterances in order, each 'speaker: text'")
    ap.add_argument("--meld", metavar="SPLIT:DIALOGUE", help="predict every utterance of a MELD dialogue")
    ap.add_argument("--checkpoint", help="checkpoint directory (default: the embedded default)")
    ap.add_argument("--caption", help="caption of the last utterance's frames (visual branch)")
    args = ap.parse_args(argv)

    gold: list[str | None]
    if args.meld:
        from ddvlm_core.meld import dialogues

        split, _, dia = args.meld.partition(":")
        try:
            by_id = dialogues(split)
            rows = by_id[int(dia)]
        except ValueError as e:
            why = e if split not in ("train", "dev", "test") else "expected SPLIT:DIALOGUE_ID"
            ap.error(f"--meld {args.meld}: {why}")
        except KeyError:
            ap.error(f"--meld {args.meld}: MELD {split} has no dialogue {dia} (ids {min(by_id)}..{max(by_id)})")
        turns, gold = [(r.speaker, r.text) for r in rows], [r.emotion for r in rows]
    elif args.turns:
        turns, gold = [parse_turn(t) for t in args.turns], [None] * len(args.turns)
        empty = [k for k, (_, text) in enumerate(turns) if not has_text(text)]
        if empty:
            ap.error(f"utterance {', '.join(map(str, empty))} has no text (each turn is 'speaker: text')")
    else:
        ap.error("give utterances or --meld SPLIT:DIALOGUE")

    quiet_transformers()
    try:  # a corrupt or foreign checkpoint (CheckpointError) or a loader's own error: one line, status 2
        recognizer, source = load_recognizer(args.checkpoint)
    except Exception as e:  # noqa: BLE001
        ap.error(f"cannot load the checkpoint: {type(e).__name__}: {e}")
    print(f"model: {source}")
    print(f"{'#':>2}  {'speaker':<12} {'tok':<5} {'predicted':<9} {'conf':>5}  {'gold':<9} utterance")
    correct = 0
    for k in range(len(turns)):
        caption = args.caption if k == len(turns) - 1 else None
        p = recognizer.predict(turns[: k + 1], caption)
        correct += p.top_label == gold[k]
        speaker = (turns[k][0] or "?")[:12]
        print(f"{k:>2}  {speaker:<12} {p.speaker_token:<5} {p.top_label:<9} {p.confidence:5.2f}  "
              f"{gold[k] or '-':<9} {turns[k][1][:60]}" + (f"  [{', '.join(p.flags)}]" if p.flags else ""))
    if any(gold):
        print(f"accuracy on this dialogue: {correct}/{len(turns)}")
    print(f"labels: {', '.join(LABELS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
