"""``final.match_steps``: the final retrain keeps the planned optimizer steps per segment."""

from __future__ import annotations

from opplan.config import Params
from opplan.stages.final import path_schedule, planned_steps

PARAMS = Params.model_validate({"plan": {"sampling": ["cs"], "clip_lengths": [4, 8], "lrs": [0.1, 0.01]},
                                "train": {"batch_size": 8}})
PLAN = {"transitions": [{"dst": "cs/4/0.1", "chosen_epoch": 3}, {"dst": "cs/8/0.1", "chosen_epoch": 0},
                        {"dst": "cs/8/0.01", "chosen_epoch": 1}, {"dst": "cs/8/0.01", "chosen_epoch": 8}]}


def test_the_plain_schedule_repeats_each_state_t_star_times() -> None:
    names = [e.state.name for e in path_schedule(PLAN, PARAMS)]
    assert names == ["cs/4/0.1"] * 3 + ["cs/8/0.01"] * 9
    assert [e.segment for e in path_schedule(PLAN, PARAMS)][3:5] == [2, 3]


def test_matching_steps_scales_each_segment_and_keeps_every_trained_one() -> None:
    scaled = path_schedule(PLAN, PARAMS, scale=0.75)  # 180 planning videos, 240 in the final retrain
    assert [e.state.name for e in scaled] == ["cs/4/0.1"] * 2 + ["cs/8/0.01"] * 1 + ["cs/8/0.01"] * 6
    segments = [e.segment for e in scaled]
    assert segments.count(2) == 1 and 1 not in segments  # t* = 1 keeps one epoch; t* = 0 stays empty


def test_planned_steps_count_the_batches_of_the_planning_split() -> None:
    # 12 epochs of ceil(180 / 8) = 23 steps each
    assert planned_steps(PLAN, PARAMS, planning_videos=180) == 12 * 23
