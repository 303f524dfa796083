"""``final.match_steps``: the final retrain keeps the planned optimizer steps per segment."""

from __future__ import annotations

from tiny import hand_written

from opplan.config import Params
from opplan.documents import PlanDocument
from opplan.stages.final import path_schedule, planned_steps

PARAMS = Params.model_validate({"plan": {"sampling": ["cs"], "clip_lengths": [4, 8], "lrs": [0.1, 0.01]},
                                "train": {"batch_size": 8}})
STEPS = [{"dst": "cs/4/0.1", "chosen_epoch": 3}, {"dst": "cs/8/0.1", "chosen_epoch": 0},
         {"dst": "cs/8/0.01", "chosen_epoch": 1}, {"dst": "cs/8/0.01", "chosen_epoch": 8}]
PLAN = PlanDocument.from_json(hand_written({"mlflow": {"planning_run_id": "p"}, "final_state": "cs/8/0.01",
                                            "path": ["S0", *(s["dst"] for s in STEPS)], "transitions": STEPS}))


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


def test_match_steps_scales_hs_as_it_scales_op() -> None:
    """The same factor on both sides: each clip length's epochs of HS's schedule as each
    segment of OP's path, so both keep the optimizer steps they had when chosen."""
    from opplan.stages.baselines import Candidate, build_schedule
    from opplan.stages.repeats import optimizer_steps

    params = PARAMS.model_copy(update={"plan": PARAMS.plan.model_copy(update={"clip_lengths": [4, 8]})})
    hs = Candidate(sampling="cs", schedule="l1-lN", decay="step", epochs=12)
    plain, scaled = build_schedule(hs, params), build_schedule(hs, params, scale=0.75)
    assert [e.state.clip_length for e in plain] == [4] * 6 + [8] * 6
    assert [e.state.clip_length for e in scaled] == [4] * 4 + [8] * 4  # round(6 * 0.75) = 4 (banker's: 4.5 -> 4)
    assert scaled[0].lr == 0.1 and scaled[-1].lr == 0.01  # the decay runs over the scaled total
    op = path_schedule(PLAN, PARAMS, scale=0.75)
    # 180 planning videos, 240 in the retrain: steps kept within a rounding on both sides alike
    for chosen, retrained in ((plain, scaled), (path_schedule(PLAN, PARAMS), op)):
        ratio = optimizer_steps(240, retrained, params.train) / optimizer_steps(180, chosen, params.train)
        assert abs(ratio - 1) < 0.15
