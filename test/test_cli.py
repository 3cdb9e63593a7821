import re
from pathlib import Path

import pytest

from ddvlm_core import cli
from ddvlm_core.meld import dialogues


def test_cli_predicts_every_utterance_of_a_meld_dialogue(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "DEFAULT_CHECKPOINT", tmp_path / "none")
    assert cli.main(["--meld", "test:0"]) == 0
    out = capsys.readouterr().out
    rows = dialogues("test")[0]
    assert "UNTRAINED head" in out
    table = [line for line in out.splitlines() if line[:2].strip().isdigit()]
    assert len(table) == len(rows)
    assert "accuracy on this dialogue: " in out and f"/{len(rows)}" in out


def test_cli_parses_speaker_prefixed_turns():
    assert cli.parse_turn("Ross: I got the job!") == ("Ross", "I got the job!")
    assert cli.parse_turn("no speaker here") == (None, "no speaker here")


@pytest.mark.parametrize("module, argv, message", [
    ("ddvlm_core.cli", ["--meld", "test:99999"], "MELD test has no dialogue 99999 (ids 0..279)"),
    ("ddvlm_core.cli", ["--meld", "val:1"], "MELD split must be one of"),
    ("ddvlm_ros.bag", ["{tmp}/bag", "--split", "val"], "MELD split must be one of"),
    ("ddvlm_ros.bag", ["{tmp}/bag", "--dialogues", "0,one"], "comma-separated dialogue ids or all"),
    ("ddvlm_ros.bag", ["{tmp}/bag", "--frames", "clips"], "needs the MELD.Raw folder"),
    pytest.param("ddvlm_ros.replay", ["{tmp}/no_bag"], "cannot read bag", marks=pytest.mark.ros),
    ("ddvlm_ros.study", ["{tmp}/no_answers.jsonl"], "no_answers.jsonl: cannot be read"),
    ("training.evaluate", ["{tmp}/no_checkpoint"], "does not exist"),
    ("training.calibrate", ["{tmp}/no_checkpoint"], "does not exist"),
    ("training.calibrate", ["checkpoints/default", "--captions", "{tmp}"], "has no visual branch and fusion"),
    ("training.export", ["{tmp}"], "no text/best.safetensors"),
    ("training.evaluate", ["checkpoints/default", "--splits", "dev,tset"], "unknown MELD splits ['tset']"),
    ("training.__main__", ["--config", "{tmp}/no.yaml"], "No such file"),
    ("training.__main__", ["--config", "training/configs/cpu.yaml", "--epochs=ten"], "epochs: expected int"),
    ("training.__main__", ["--config", "training/configs/cpu.yaml", "--lr=0"], "lr must be > 0"),
    ("training.__main__", ["--config", "training/configs/cpu.yaml", "--caption_source={tmp}/none",
                           "--run_dir={tmp}/run"], "no such captions file or folder"),
    ("training.ablate", ["--config", "training/configs/cpu.yaml", "--sd_alpha=2"], "sd_alpha must be in [0, 1]"),
    ("training.ablate", ["--render", "{tmp}/no_report.json"], "no such report"),
    ("training.ablate", ["--render", "reports/quantization.json"], "quantization.json: not an ablation report"),
    ("training.ablate", ["--render", "README.md"], "README.md: not JSON"),
    ("training.ablate", ["--merge", "reports/ablation.json", "reports/quantization.json", "--report", "{tmp}/m"],
     "cannot merge: reports/quantization.json: not an ablation report"),
    ("training.ablate", ["--config", "training/configs/cpu.yaml", "--seeds", "0,one"], "comma-separated integers"),
    ("training.results", ["{tmp}/no_report.json"], "no such report"),
    ("training.captions", ["--video_dir", "{tmp}", "--batch_size", "0"], "must be >= 1"),
    ("ddvlm_core.cli", ["Ross: I got the job!", "Rachel: "], "utterance 1 has no text"),
    ("ddvlm_core.cli", ["Ross: \x01\x7f", "Rachel: hi"], "utterance 0 has no text"),  # only control characters
    ("ddvlm_core.cli", ["--checkpoint", "{tmp}", "Ross: hi"], "not a ddvlm checkpoint (no manifest.json)"),
    ("ddvlm_core.cli", ["--checkpoint", "{tmp}/corrupt", "Ross: hi"],
     "cannot load the checkpoint: CheckpointError: {tmp}/corrupt/text_head.safetensors: sha256 mismatch"),
])
def test_command_lines_answer_bad_input_with_one_error_line_and_status_2(tmp_path, capsys, module, argv, message):
    import importlib

    import shutil

    from ddvlm_core.cli import DEFAULT_CHECKPOINT

    if "{tmp}/corrupt" in argv:
        shutil.copytree(DEFAULT_CHECKPOINT, tmp_path / "corrupt")
        with open(tmp_path / "corrupt" / "text_head.safetensors", "ab") as fh:  # a copy that changed on its way
            fh.write(b"\0")
    main = importlib.import_module(module).main
    try:
        status = main([a.format(tmp=tmp_path) for a in argv])
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err
    assert status == 2 and message.format(tmp=tmp_path) in err and "Traceback" not in err


class _ParserBuilt(Exception):
    """Raised where a command would parse its arguments: the test then holds the parser it built."""


COMMANDS = ["training.ablate", "training.evaluate", "training.calibrate", "training.captions", "training.export",
            "training.results", "training.model_card", "ddvlm_core.cli",
            pytest.param("ddvlm_ros.replay", marks=pytest.mark.ros), "ddvlm_ros.bag",
            "ddvlm_ros.study", "ddvlm_ros.corpus", "bench/asr_noise.py", "bench/text_windows.py",
            "bench/turn_ends.py", "bench/context_turns.py", "bench/layer_cache.py", "bench/quantization.py",
            "bench/ros_latency.py", "bench/camera_cost.py", "bench/asr_loops.py", "bench/asr_partials.py",
            "bench/duplicates.py", "bench/frame_windows.py", "bench/late_transcripts.py", "bench/self_echo.py",
            "bench/speaker_tokens.py", "bench/study_corpus.py", "bench/executor_transitions.py",
            "scripts/gpu/plan.py", "scripts/rosdep_snapshot.py"]
REPO = Path(__file__).resolve().parents[1]


def parser_of(command: str, monkeypatch):
    """The argparse parser that ``command`` (a module, or a script's path) builds, held where it would parse."""
    import argparse
    import importlib
    import importlib.util

    if command.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(command).stem, REPO / command)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(command)
    built = []

    def hold(parser, *args, **kwargs):
        built.append(parser)
        raise _ParserBuilt

    with monkeypatch.context() as patched:
        patched.setattr(argparse.ArgumentParser, "parse_known_args", hold)
        with pytest.raises(_ParserBuilt):
            module.main(["x"])
    return built[0]


def test_every_script_with_a_command_line_is_checked_here():
    commands = {c if isinstance(c, str) else c.values[0] for c in COMMANDS}
    scripts = {f"bench/{p.name}" for p in (REPO / "bench").glob("*.py") if "def main(" in p.read_text()}
    assert scripts <= commands, sorted(scripts - commands)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_says_what_it_does_and_what_each_option_means(command, monkeypatch):
    parser = parser_of(command, monkeypatch)
    assert parser.description and len(parser.description) > 20
    undescribed = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert undescribed == []


DOCS = ("README.md", "MODEL_CARD.md", "scripts/gpu/README.md")
COMMAND = re.compile(r"python3? (?:-m ([a-z_][\w.]*)|((?:bench|scripts/gpu)/\w+\.py))")
UNCHECKED = {"venv", "colcon", "ddvlm_core.assets", "scripts/gpu/backbone_shards.py"}  # not ours, or no options


def commands_in(text: str) -> list[tuple[str, list[str]]]:
    """(command, its --options) of each `python -m X ...` / `python bench/X.py ...` in Markdown ``text``: in a code
    block, line by line (a trailing backslash goes on), elsewhere in a `code span` (which may wrap); the command
    ends at a comment, a pipe, && or ;."""
    pieces = []
    for k, part in enumerate(re.split(r"^```.*$", text, flags=re.M)):
        if k % 2:  # inside a code block
            pieces += part.replace("\\\n", " ").splitlines()
        else:
            pieces += re.findall(r"`([^`]+)`", part.replace("\n", " "))
    found = []
    for piece in pieces:
        for m in COMMAND.finditer(piece):
            rest = re.split(r"\s#|\||&&|;", piece[m.end():])[0]
            found.append((m.group(1) or m.group(2), re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", rest)))
    return found


@pytest.mark.ros  # ddvlm_ros.replay's parser: the module imports rclpy
def test_every_command_the_docs_give_uses_options_the_command_has(monkeypatch):
    """Each command the README, the model card and the GPU plan give (python -m training ..., python -m
    training.ablate ..., python bench/asr_noise.py ...) as a reader copies it: every --option is one its parser has,
    or for training and training.ablate a key of TrainConfig (--key=value)."""
    import dataclasses

    from training.config import TrainConfig

    keys = {f"--{f.name}" for f in dataclasses.fields(TrainConfig)}
    options = {"training": keys | {"--config", "--dry-run", "--help"}}
    mentions = [mention for doc in DOCS for mention in commands_in((REPO / doc).read_text())]
    found = [(command, option) for command, opts in mentions for option in opts]
    assert len({command for command, _ in mentions}) >= 25 and len(found) >= 60
    for command in sorted({c for c, _ in found} - set(options) - UNCHECKED):
        parser = parser_of(command, monkeypatch)
        options[command] = {o for a in parser._actions for o in a.option_strings} | (
            keys | {"--config"} if command == "training.ablate" else set())
    unknown = sorted({(command, option) for command, option in found
                      if command not in UNCHECKED and option not in options[command]})
    assert unknown == []
