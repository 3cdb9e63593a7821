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
    assert f"accuracy on this dialogue: " in out and f"/{len(rows)}" in out


def test_cli_parses_speaker_prefixed_turns():
    assert cli.parse_turn("Ross: I got the job!") == ("Ross", "I got the job!")
    assert cli.parse_turn("no speaker here") == (None, "no speaker here")
