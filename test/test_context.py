import json

import pytest

from ddvlm_core.context import (UNKNOWN_SPEAKER_TOKEN, Dialogue, PromptBuilder, SpeakerRegistry, has_text, make_turns,
                                normalize_utterance)
from ddvlm_core.meld import dialogues, read_split
from ddvlm_core.text import load_tokenizer


def test_speaker_tokens_follow_first_appearance_and_survive_leaving_and_returning():
    turns = make_turns([("Ross", "a"), ("Rachel", "b"), ("Joey", "c"), ("Rachel", "d"), ("Ross", "e"), ("Monica", "f")])
    assert [t.speaker_token for t in turns] == ["<s1>", "<s2>", "<s3>", "<s2>", "<s1>", "<s4>"]


def test_rolling_dialogue_keeps_tokens_after_early_turns_are_forgotten():
    d = Dialogue(max_turns=2)
    for speaker in ["Ross", "Rachel", "Joey", "Chandler", "Ross"]:
        d.add(speaker, "hello")
    assert len(d) == 2
    assert [t.speaker_token for t in d.turns] == ["<s4>", "<s1>"]  # Ross keeps <s1> though his turn left


def test_a_tenth_speaker_takes_the_token_of_the_speaker_heard_least_recently(mpnet_tokenizer):
    """The tokenizer knows <s1>..<s9>; <s10> would be the pieces '<', 's', '##10', '>' the model never saw."""
    names = [f"guest{k}" for k in range(1, 10)]
    d = Dialogue(max_turns=32)
    for name in names:
        d.add(name, "hello")
    d.add("guest1", "me again")  # guest1 is now heard more recently than guest2
    assert [t.speaker_token for t in d.turns] == [f"<s{k}>" for k in range(1, 10)] + ["<s1>"]
    assert d.add("guest10", "hi").speaker_token == "<s2>"  # guest2, heard least recently, gives up <s2>
    assert d.add("guest2", "back").speaker_token == "<s3>"  # guest2 again: guest3's, now the least recent
    assert d.add("guest1", "still here").speaker_token == "<s1>"  # a speaker never evicted keeps the token
    prompt = PromptBuilder(mpnet_tokenizer).build(d.turns)
    pieces = mpnet_tokenizer.convert_ids_to_tokens(list(prompt.input_ids))
    assert "##10" not in pieces and pieces[-4:] == ["<s1>", "feels", "<mask>", "</s>"]
    assert make_turns([(f"p{k}", "x") for k in range(12)])[-1].speaker_token == "<s3>"  # training: the same
    with pytest.raises(ValueError, match="n_tokens"):
        SpeakerRegistry(0)


def test_missing_speaker_gets_one_stable_unknown_token():
    turns = make_turns([(None, "a"), ("Ross", "b"), ("", "c"), ("  ", "d")])
    unknown = UNKNOWN_SPEAKER_TOKEN
    assert [t.speaker_token for t in turns] == [unknown, "<s1>", unknown, unknown]


def test_known_answer_tokens_with_the_real_mpnet_tokenizer(mpnet_tokenizer):
    prompt = PromptBuilder(mpnet_tokenizer).build(make_turns([("Ross", "Hi there!"), ("Rachel", "Oh my god. Hello")]))
    assert prompt.text == "<s1>: Hi there! <s2>: Oh my god. Hello Now <s2> feels <mask>"
    assert mpnet_tokenizer.convert_ids_to_tokens(list(prompt.input_ids)) == [
        "<s>", "<s1>", ":", "hi", "there", "!", "<s2>", ":", "oh", "my", "god", ".", "hello",
        "now", "<s2>", "feels", "<mask>", "</s>"]
    assert prompt.mask_index == 16 and prompt.input_ids[16] == mpnet_tokenizer.mask_token_id
    assert (prompt.n_turns_used, prompt.n_turns_dropped, prompt.truncated_current) == (2, 0, False)


@pytest.mark.parametrize("which", ["mpnet", "roberta"])
def test_prompt_ids_equal_tokenizing_the_prompt_text(which, mpnet_tokenizer, tiny_roberta_dir):
    tok = mpnet_tokenizer if which == "mpnet" else load_tokenizer(tiny_roberta_dir)
    builder = PromptBuilder(tok)
    rows = dialogues("dev")[0]
    for prompt in builder.build_all(make_turns([(r.speaker, r.text) for r in rows])):
        assert list(prompt.input_ids) == tok(prompt.text)["input_ids"]
        assert tok.convert_ids_to_tokens(prompt.input_ids[prompt.mask_index]) == tok.mask_token


def test_long_dialogue_drops_earliest_whole_utterances_and_stays_within_511(mpnet_tokenizer):
    builder = PromptBuilder(mpnet_tokenizer)
    words = " ".join(f"word{j}" for j in range(40))  # ("word " * 40 would be cut as an ASR repetition loop)
    turns = make_turns([("A" if k % 2 else "B", f"utterance number {k} {words}") for k in range(40)])
    prompt = builder.build(turns)
    assert len(prompt.input_ids) <= 511
    assert prompt.n_turns_dropped > 0 and prompt.n_turns_used + prompt.n_turns_dropped == 40
    first_kept = 40 - prompt.n_turns_used
    assert prompt.text.startswith(builder.line(turns[first_kept]))
    # one more (earlier) utterance would not have fitted
    ids = builder._ids
    one_more = (len(prompt.input_ids) + len(ids(builder.line(turns[first_kept - 1]), False))
                - len(ids(builder.line(turns[first_kept]), False)) + len(ids(builder.line(turns[first_kept]), True)))
    assert one_more > 511
    assert "utterance number 39" in prompt.text and "utterance number 0 " not in prompt.text


def test_current_utterance_too_long_keeps_its_tail_and_says_so(mpnet_tokenizer):
    text = " ".join(f"w{k}" for k in range(600)) + " finale"
    warned = "sequence-length-is-longer-than-the-specified-maximum"  # set when transformers warns of the length
    mpnet_tokenizer.deprecation_warnings.pop(warned, None)
    prompt = PromptBuilder(mpnet_tokenizer).build(make_turns([("Ross", "earlier"), ("Ross", text)]))
    assert warned not in mpnet_tokenizer.deprecation_warnings  # cut here: no "indexing errors" line in a robot's log
    toks = mpnet_tokenizer.convert_ids_to_tokens(list(prompt.input_ids))
    assert prompt.truncated_current and prompt.n_turns_dropped == 1
    assert len(prompt.input_ids) == 511
    assert toks[:3] == ["<s>", "<s1>", ":"] and toks[-5:] == ["now", "<s1>", "feels", "<mask>", "</s>"]
    assert "finale" in toks and "w0" not in prompt.text


def test_without_speaker_tokens_ablation(mpnet_tokenizer):
    prompt = PromptBuilder(mpnet_tokenizer, speaker_tokens=False).build(make_turns([("Ross", "Hi"), ("Rachel", "Yo")]))
    assert prompt.text == "Hi Yo Now the speaker feels <mask>"
    assert not any(t.startswith("<s") and t.endswith(">") and t != "<s>"
                   for t in mpnet_tokenizer.convert_ids_to_tokens(list(prompt.input_ids)))


def test_every_meld_prompt_fits_and_is_causal(mpnet_tokenizer):
    builder = PromptBuilder(mpnet_tokenizer)
    for rows in list(dialogues("test").values())[:20]:
        turns = make_turns([(r.speaker, r.text) for r in rows])
        prompts = builder.build_all(turns)
        longer = builder.build_all(turns + make_turns([("Zed", "a later utterance")]))
        assert prompts == longer[: len(prompts)]  # later utterances never change earlier prompts
        assert all(len(p.input_ids) <= 511 for p in prompts)


def test_a_turn_taken_back_leaves_the_dialogue_wherever_it_is():
    dialogue = Dialogue(max_turns=2)
    first = dialogue.add("Ross", "Hi.")
    second = dialogue.add("Rachel", "Hello.")
    dialogue.take_back(first)  # not the latest (a transcript placed before later ones): it leaves too
    assert dialogue.turns == (second,)
    dialogue.take_back(first)  # no longer there: nothing changes
    assert dialogue.turns == (second,)
    dialogue.take_back(second)
    assert dialogue.turns == ()
    first = dialogue.add("Ross", "Hi.")
    third = dialogue.add("Ross", "How are you?")
    fourth = dialogue.add("Ross", "Fine?")  # pushes "Hi." out of the window of 2
    dialogue.take_back(fourth)
    assert dialogue.turns == (third,) and dialogue.speakers.token("Rachel") == "<s2>"


def test_bad_text_gives_clear_errors(mpnet_tokenizer, tiny_qwen_dir):
    with pytest.raises(ValueError, match="not valid UTF-8"):
        normalize_utterance(b"caf\xe9")
    # half an emoji (text cut between the two UTF-16 halves of 😀, then read by json.loads): the tokenizer failed
    # on it with "TextEncodeInput must be Union[...]", and the turn stayed in the dialogue
    for broken in ("I love it \ud83d", json.loads('"\\ude00 hi"')):
        with pytest.raises(ValueError, match=r"not valid Unicode \(a lone surrogate, U\+D[8-F][0-9A-F]{2}, at "):
            normalize_utterance(broken)
        assert not has_text(broken)
    assert normalize_utterance("I love it \U0001F600") == "I love it \U0001F600"
    with pytest.raises(ValueError, match="empty"):
        normalize_utterance(" \t\n ")
    with pytest.raises(TypeError):
        normalize_utterance(42)
    assert normalize_utterance("  Oh\x00 my\n\tgod ".encode()) == "Oh my god"
    with pytest.raises(ValueError, match="empty dialogue"):
        PromptBuilder(mpnet_tokenizer).build([])
    from transformers import AutoTokenizer

    with pytest.raises(ValueError, match="no mask token"):
        PromptBuilder(AutoTokenizer.from_pretrained(tiny_qwen_dir))


def test_every_utterance_form_gives_the_same_turns_and_a_dict_is_never_unpacked_as_its_keys():
    pairs = make_turns([("Ross", "I got the job!"), ("Rachel", "No way!")])
    dicts = make_turns([{"speaker": "Ross", "text": "I got the job!"}, {"text": "No way!", "speaker": "Rachel"}])
    lists = make_turns([["Ross", "I got the job!"], ["Rachel", "No way!"]])
    assert pairs == dicts == lists and [t.text for t in dicts] == ["I got the job!", "No way!"]
    bare = make_turns(["Hello there.", b"Hi!"])
    assert [t.speaker_token for t in bare] == [UNKNOWN_SPEAKER_TOKEN] * 2 and bare[1].text == "Hi!"
    numbered = make_turns([(1, "a"), (2, "b"), (1, "c")])
    assert [t.speaker_token for t in numbered] == ["<s1>", "<s2>", "<s1>"] and numbered[0].speaker == "1"
    for bad, why in [([("A", "hi", "extra")], "utterance 0: expected"), ([("A", "ok"), {"speaker": "B"}],
                     "utterance 1: a mapping needs a 'text' key"), ([(1.5, "hi")], "speaker must be a str")]:
        with pytest.raises(TypeError, match=why):
            make_turns(bad)


@pytest.mark.parametrize("which", ["mpnet", "roberta"])
def test_special_token_spellings_in_an_utterance_are_text_not_tokens(which, mpnet_tokenizer, tiny_roberta_dir):
    """Typed text or an ASR's marker may spell <mask>, </s>, <s2> or <unk>: it must not end the sequence, add a
    mask or a speaker. Without such spellings (all of MELD) the ids are the prompt text's, as before."""
    tok = mpnet_tokenizer if which == "mpnet" else load_tokenizer(tiny_roberta_dir)
    said = "so I typed <mask> and </s> and <s2> and <UNK> <pad> <s>"
    for speaker_tokens in (True, False):
        builder = PromptBuilder(tok, speaker_tokens=speaker_tokens)
        prompt = builder.build(make_turns([("Ross", "Hi there!"), ("Rachel", said), ("Ross", "Okay.")]))
        ids = list(prompt.input_ids)
        added = {i for i in tok.added_tokens_decoder}
        expected_added = [tok.bos_token_id or tok.cls_token_id] + (
            tok.convert_tokens_to_ids(["<s1>", "<s2>", "<s1>", "<s1>"]) if speaker_tokens else []) + [
            tok.mask_token_id, tok.sep_token_id or tok.eos_token_id]
        assert [i for i in ids if i in added] == expected_added
        assert prompt.mask_index == len(ids) - 2 and ids.count(tok.mask_token_id) == 1
        text_pieces = tok.convert_ids_to_tokens(ids)
        assert "".join(text_pieces).replace("Ġ", "").replace("##", "").count("mask") == 2  # typed + query
        plain = make_turns([("Ross", "Hi there!"), ("Rachel", "so I typed"), ("Ross", "Okay.")])
        plain_prompt = builder.build(plain)
        assert list(plain_prompt.input_ids) == tok(plain_prompt.text)["input_ids"]
    # the typed line is cut like any other when the budget is short, and the tail is still literal
    tail = PromptBuilder(tok, max_tokens=12).build(make_turns([("Ross", said)]))
    assert len(tail.input_ids) <= 12 and tail.truncated_current
    assert [i for i in tail.input_ids if i in added][-2:] == [tok.mask_token_id, tok.sep_token_id or tok.eos_token_id]
    assert tail.input_ids.count(tok.mask_token_id) == 1


def test_what_whisper_writes_for_silence_is_not_speech_and_no_meld_utterance_is():
    from ddvlm_core.context import non_speech

    silent = ["[BLANK_AUDIO]", " (upbeat music) ♪", "*laughs*", "<noise>", "Thanks for watching!",
              "Thank you for watching. Thank you for watching.", "Subtitles by the Amara.org community",
              "Please subscribe.", "Don't forget to like and subscribe!", "Untertitel im Auftrag des ZDF, 2017",
              "ご視聴ありがとうございました", "시청해주셔서 감사합니다!", "(music) Thanks for watching.", "", "  \t"]
    said = ["Thank you.", "Thanks for watching my dog while I was away!", "Thanks for watching, Rachel.",
            "I'll subscribe to your newsletter.", "Thanks for watching! Bye.", "Way. [laughs]", "you", b"Ross: hi"]
    assert [t for t in silent if not non_speech(t)] == [] and [t for t in said if non_speech(t)] == []
    assert [r.text for split in ("train", "dev", "test") for rows in dialogues(split).values() for r in rows
            if non_speech(r.text)] == []


def test_an_asr_repetition_loop_is_cut_to_three_repeats_and_no_meld_utterance_is_changed():
    """Whisper on noise repeats a sentence until its window ends: past 3 repeats over 24+ words it is a loop
    (MELD's people repeat a unit at most 10 times, over at most 18 words), cut to its first 3 repeats; a last
    repeat cut short by the window goes with it."""
    from ddvlm_core.context import collapse_repetition_loops as collapse

    assert collapse("I don't know. " + "Thank you. " * 40 + "Thank") == ("I don't know. Thank you. Thank you. "
                                                                         "Thank you.", 37)
    assert collapse("Wait. " + "I'm going to the store. " * 6 + "Bye!") == ("Wait. I'm going to the store. I'm going "
                                                                            "to the store. I'm going to the store. "
                                                                            "Bye!", 3)
    assert collapse("No! " * 30 + "No. I'm fine.") == ("No! No! No! I'm fine.", 28)  # "No." is a repeat too
    assert collapse("a b " * 20) == ("a b a b a b", 17)  # the shortest unit: not "a b a b" x 10
    twice = "Oh God, I hate my job, I hate it, I really do hate this job. " * 2
    for kept in ["Not yet! " * 8, "ha " * 23, "Go! " * 10 + "Go!", twice]:
        assert collapse(kept) == (kept, 0)  # under 24 words, or fewer than 3 repeats
    texts = [u.text for split in ("train", "dev", "test") for u in read_split(split)]
    assert len(texts) == 13708 and [t for t in texts if collapse(t)[1] or collapse(t)[0] != t] == []


def test_the_readme_states_the_loop_rule_the_code_applies():
    from pathlib import Path

    from ddvlm_core.context import LOOP_KEEP, LOOP_MAX_UNIT, LOOP_MIN_REPEATS, LOOP_MIN_WORDS

    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert (f"a unit of up to {LOOP_MAX_UNIT} words repeated {LOOP_MIN_REPEATS}+ times over {LOOP_MIN_WORDS}+ words "
            f"is cut to its first {LOOP_KEEP} repeats") in readme


def test_a_cut_loop_reaches_the_model_as_three_repeats_and_the_answer_says_so(mpnet_tokenizer, tiny_text_checkpoint):
    from ddvlm_core.inference import EmotionRecognizer

    looped = make_turns([("Ross", "I got the job!"), ("Rachel", "Thank you. " * 40)])
    three = make_turns([("Ross", "I got the job!"), ("Rachel", "Thank you. " * 3)])
    assert [t.repeats_cut for t in looped] == [0, 37] and [t.repeats_cut for t in three] == [0, 0]
    builder = PromptBuilder(mpnet_tokenizer)
    assert builder.build(looped).input_ids == builder.build(three).input_ids
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    p_looped, p_three = rec.predict_batch([looped, three])
    assert p_looped.probabilities == pytest.approx(p_three.probabilities, abs=1e-6)
    assert p_looped.flags == ("transcript-repetition-loop",) and p_three.flags == ()


def test_a_turn_without_punctuation_is_ended_with_a_full_stop_and_any_other_is_kept():
    from ddvlm_core.context import end_sentence

    assert end_sentence("i got the job") == "i got the job."
    assert end_sentence("oh my god  ") == "oh my god."  # 1 or 2 words too: every turn ends
    assert end_sentence("yeah") == "yeah."
    for kept in ("I got the job!", "Well, maybe", "you did what?", "wait…", "", "   ", "♪"):
        assert end_sentence(kept) == kept  # punctuated somewhere, or no word to end
