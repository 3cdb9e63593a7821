"""MELD -> prompt examples (built by ddvlm_core's PromptBuilder, as the robot builds them) and batches."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ddvlm_core.context import Dialogue, PromptBuilder
from ddvlm_core.meld import SPLIT_SIZES, UNLABELLED, dialogues, max_context_turns, utterance_key


@dataclass(frozen=True)
class Example:
    split: str
    dialogue_id: int
    utterance_id: int
    input_ids: tuple[int, ...]
    label: int

    @property
    def key(self) -> str:
        return utterance_key(self.split, self.dialogue_id, self.utterance_id)


def build_examples(split: str, builder: PromptBuilder, meld_dir: str = "", limit_dialogues: int = 0,
                   text_of: Callable[[str], str] | None = None) -> list[Example]:
    """One example per labelled utterance (all of MELD's; a turn of your own corpus without an emotion is context
    only), in dialogue order; each prompt sees only its own and earlier turns (of your own corpus, as many as the
    robot's node read: ``max_context_turns``), read from a ``Dialogue`` as the node reads its context. ``text_of``
    rewrites every utterance's text first (e.g. ``unpunctuate``: the dialogue as an ASR without punctuation writes
    it)."""
    directory = Path(meld_dir) if meld_dir else None
    dias = dialogues(split, directory)
    window = max_context_turns(directory)  # your own corpus: the turns the robot's node read, at most
    ids = sorted(dias)[:limit_dialogues] if limit_dialogues else sorted(dias)
    out = []
    for dia in ids:
        dialogue = Dialogue(window)  # the node's rolling context: the latest ``window`` turns, tokens kept
        for r in dias[dia]:
            dialogue.add(r.speaker, text_of(r.text) if text_of else r.text)
            if r.label != UNLABELLED:
                out.append(Example(split, r.dialogue_id, r.utterance_id, builder.build(dialogue.turns).input_ids,
                                   r.label))
    return out


UNPUNCTUATED = "train_unpunctuated"  # the training prompts as an ASR without punctuation writes them


def punctuation_drops(seed: int, epoch: int, n: int, share: float) -> torch.Tensor:
    """Which of ``n`` training prompts go without punctuation in ``epoch`` (``punctuation_dropout``): bool (n,),
    about ``share`` of them True, drawn from the seed and the epoch alone, so every rank of a data-parallel run
    and a resumed run draw the same."""
    generator = torch.Generator().manual_seed((seed + 1) * 1_000_003 + epoch)
    return torch.rand(n, generator=generator) < share


def shared_clips(split_a: str, split_b: str, meld_dir: str = "") -> list[tuple[str, str]]:
    """Utterances that appear in both splits (same episode, time stamps and text): train/test leakage."""
    from ddvlm_core.meld import read_split

    where = Path(meld_dir) if meld_dir else None
    index = {(u.season, u.episode, u.start, u.end, u.text): u for u in read_split(split_a, where)}
    return [(index[k].key, u.key) for u in read_split(split_b, where)
            if (k := (u.season, u.episode, u.start, u.end, u.text)) in index]


def check_full_test_split(examples: list[Example]) -> None:
    """The evaluator refuses a 'test' that is not exactly MELD's 2,610 utterances."""
    if len(examples) != SPLIT_SIZES["test"] or len({e.key for e in examples}) != SPLIT_SIZES["test"]:
        raise ValueError(f"MELD test must be exactly {SPLIT_SIZES['test']} utterances, got {len(examples)}: "
                         "results on a subset are not comparable to the paper's")


def batches(lengths: list[int], batch_size: int, shuffle: bool, seed: int, bucket: bool = True,
            megabatch: int = 0) -> list[list[int]]:
    """Index batches. Bucketed: sorted by length, cut into batches, batch order shuffled (seeded): the same
    batches for every seed. With ``megabatch`` > 0 (bucketed, shuffled), transformers' group_by_length: a seeded
    permutation is cut into groups of ``megabatch`` x ``batch_size`` prompts, each group sorted by length and
    cut into batches, so that a new seed (epoch) makes new batches of still similar lengths."""
    rng = random.Random(seed)
    if bucket and shuffle and megabatch > 0:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        size = megabatch * batch_size
        groups = [sorted(order[g : g + size], key=lambda i: (lengths[i], i)) for g in range(0, len(order), size)]
        out = [group[i : i + batch_size] for group in groups for i in range(0, len(group), batch_size)]
        rng.shuffle(out)
        return out
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i)) if bucket else list(range(len(lengths)))
    if shuffle and not bucket:
        rng.shuffle(order)
    out = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle and bucket:
        rng.shuffle(out)
    return out


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from ddvlm_core.text import collate_prompts

    ids, mask = collate_prompts([e.input_ids for e in examples], pad_id)
    return ids, mask, torch.tensor([e.label for e in examples])
