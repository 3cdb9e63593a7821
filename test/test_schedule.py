"""The Section 4.2 learning-rate schedule, and how reports place a time-boxed run in it."""
import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from training.ablate import truncation_line
from training.loop import linear_warmup
from training.schedule import lr_factor, lr_left_after


def test_the_schedule_is_transformers_linear_warmup_step_for_step():
    warmup, total = 7, 40
    ours = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-5)
    theirs = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-5)
    ours_sched = linear_warmup(ours, warmup, total)
    theirs_sched = get_linear_schedule_with_warmup(theirs, warmup, total)
    for step in range(total + 3):
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], abs=1e-15), step
        assert ours.param_groups[0]["lr"] == pytest.approx(3e-5 * lr_factor(step, warmup, total), abs=1e-15)
        ours.step(), theirs.step(), ours_sched.step(), theirs_sched.step()
    assert ours.param_groups[0]["lr"] == 0.0


def test_where_a_stopped_run_left_the_learning_rate():
    # 10 epochs of 625 steps, warm-up 10 %: 625 warm-up steps, then 5,625 of decay
    assert lr_left_after(5, 10, 0.1, 625) == pytest.approx(3125 / 5625)
    assert lr_left_after(8, 10, 0.1, 625) == pytest.approx(1250 / 5625)
    assert lr_left_after(10, 10, 0.1, 625) == 0.0
    assert lr_left_after(5, 5, 0.1, 625) == 0.0  # the same epochs as a 5-epoch schedule: decayed to 0


def test_the_report_names_the_rows_their_time_budget_cut_short():
    def runs(*epochs_run):
        return [{"seed": k, "epochs_run": n, "text_history": [{"epoch": n, "train_steps": 625}]}
                for k, n in enumerate(epochs_run)]

    entries = [{"row": "text_sd", "runs": runs(5, 5, 4)}, {"row": "text_no_sd", "runs": runs(10, 10, 10)},
               {"row": "full", "not_run": "needs captions"}]
    line = truncation_line(entries, 10, 0.1)[1]
    assert "before the 10-epoch schedule ended" in line
    assert "text_sd after 4 (67%), 5 (56%)." in line and "text_no_sd" not in line
    assert truncation_line([{"row": "text_no_sd", "runs": runs(10, 10)}], 10, 0.1) == []
