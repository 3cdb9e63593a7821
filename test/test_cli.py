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
            "ddvlm_ros.study", "bench/asr_noise.py", "bench/text_windows.py", "bench/turn_ends.py",
            "bench/context_turns.py", "bench/layer_cache.py", "bench/quantization.py", "bench/ros_latency.py",
            "bench/camera_cost.py", "scripts/gpu/plan.py"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_says_what_it_does_and_what_each_option_means(command, monkeypatch):
    import argparse
    import importlib
    import importlib.util
    from pathlib import Path

    if command.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(command).stem, Path(__file__).parents[1] / command)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(command)
    built = []

    def hold(parser, *args, **kwargs):
        built.append(parser)
        raise _ParserBuilt

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", hold)
    with pytest.raises(_ParserBuilt):
        module.main(["x"])
    parser = built[0]
    assert parser.description and len(parser.description) > 20
    undescribed = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert undescribed == []
