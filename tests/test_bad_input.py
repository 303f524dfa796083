"""Bad input gets one clear error (exit status 2, no traceback) and loses nothing.

Damage done here: invalid ``params.yaml`` through the real command lines, missing
dataset and shards, broken videos iterated by DataLoader workers, a transition that
diverges on one route of the plan, and checkpoints that are not what they claim.
(The fuzzing of parsers and of the knee fitter is in ``test_fuzz.py``; bad videos in
``prepare`` are in ``test_prepare.py``, whose fixtures are reused here.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from test_prepare import odd_dataset, odd_shards  # noqa: F401 - fixtures, used through `broken_shards`
from tiny import tiny_params, transition_runs

from opplan import tracking as t
from opplan.config import EvaluateParams, ModelParams, TrainParams
from opplan.data.annotations import import_dataset
from opplan.data.dataset import ClipDataset, make_loader, read_videos
from opplan.errors import DataError, OpplanError
from opplan.models import build_model
from opplan.train import setup as train_setup
from opplan.train.checkpoint import (
    FORMAT,
    load_epoch_state,
    load_model,
    model_identity,
    save_epoch_state,
    save_model,
)

ROOT = Path(__file__).resolve().parent.parent

# --- invalid params and missing inputs, through the real command lines -------------------------

BAD_PARAMS = {  # name: (params.yaml text, fragments of the one error message)
    "unknown_key": ("plan:\n  delay: 3\n  bogus: 1\n", [":3: unknown key 'plan.bogus'", "allowed keys here:", "delay"]),
    "wrong_type": ("train:\n  batch_size: many\n", [":2: 'train.batch_size'", "valid integer", "'many'"]),
    "lrs_not_decreasing": ("plan:\n  lrs: [0.01, 0.01, 0.001]\n", [":2: 'plan.lrs'", "strictly decreasing"]),
    "clips_not_increasing": ("plan:\n  clip_lengths: [8, 4, 16]\n", [":2: 'plan.clip_lengths'", "strictly increasing"]),
    "final_not_in_graph": ("plan:\n  clip_lengths: [4, 8]\n  final_states: [cs/16/0.0001]\n",
                           [":3: 'plan.final_states'", "final state 'cs/16/0.0001' is not a state of the graph",
                            "clip_length in [4, 8]"]),
}
CLI = [sys.executable, "-m", "opplan.cli"]
STAGE = [sys.executable, str(ROOT / "pipeline" / "plan.py")]


@dataclass(frozen=True)
class Ran:
    returncode: int
    stderr: str
    left: list[str]
    """What the command left in its (empty) working folder."""


@pytest.fixture(scope="module")
def command_results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Ran]:
    """Every command x bad input, run at once (each in its own empty working folder)."""
    base = tmp_path_factory.mktemp("commands")
    jobs: dict[tuple[str, str], list[str]] = {}
    for name, (text, _) in BAD_PARAMS.items():
        (base / f"{name}.yaml").write_text(text)
        params = str(base / f"{name}.yaml")
        jobs[("check-params", name)] = [*CLI, "check-params", params]
        jobs[("plan", name)] = [*CLI, "plan", "--params", params]
    jobs[("pipeline/plan.py", "final_not_in_graph")] = [*STAGE, str(base / "final_not_in_graph.yaml")]
    # missing dataset: valid params, but no shards / no data folder
    (base / "valid.yaml").write_text(yaml.safe_dump({"plan": {"clip_lengths": [4, 8]}}))
    jobs[("plan", "no_shards")] = [*CLI, "plan", "--params", str(base / "valid.yaml")]
    jobs[("pipeline/prepare.py", "no_data")] = [sys.executable, str(ROOT / "pipeline" / "prepare.py"),
                                                str(base / "valid.yaml")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    running = {}
    for key, command in jobs.items():
        cwd = base / f"cwd-{key[0].replace('/', '_')}-{key[1]}"
        cwd.mkdir()
        running[key] = (cwd, subprocess.Popen(command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE))
    results = {}
    for key, (cwd, process) in running.items():
        _, stderr = process.communicate(timeout=120)
        results[key] = Ran(process.returncode, stderr, sorted(p.name for p in cwd.iterdir()))
    return results


def assert_one_clean_error(ran: Ran) -> str:
    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr, ran.stderr
    errors = [line for line in ran.stderr.splitlines() if line.startswith("opplan: error:")]
    assert len(errors) == 1, ran.stderr
    assert ran.left == [], f"the failed command wrote {ran.left}"  # no mlflow.db, .opplan, plan.json, shards
    return ran.stderr[ran.stderr.index("opplan: error:"):]


@pytest.mark.parametrize("name", sorted(BAD_PARAMS))
@pytest.mark.parametrize("command", ["check-params", "plan"])
def test_bad_params_one_error_exit_2_nothing_written(command_results: dict, command: str, name: str) -> None:
    message = assert_one_clean_error(command_results[(command, name)])
    for fragment in BAD_PARAMS[name][1]:
        assert fragment in message, message


def test_bad_params_in_the_dvc_stage_script(command_results: dict) -> None:
    message = assert_one_clean_error(command_results[("pipeline/plan.py", "final_not_in_graph")])
    assert "final state 'cs/16/0.0001' is not a state of the graph" in message


def test_missing_shards_and_missing_dataset_say_how_to_make_them(command_results: dict) -> None:
    message = assert_one_clean_error(command_results[("plan", "no_shards")])
    assert "shards/videos.csv not found" in message and "python pipeline/prepare.py" in message
    message = assert_one_clean_error(command_results[("pipeline/prepare.py", "no_data")])
    assert "dataset folder data does not exist" in message and "opplan data synth data" in message


# --- broken videos never reach a DataLoader worker ----------------------------------------------


@pytest.fixture
def broken_shards(request: pytest.FixtureRequest) -> Path:
    """``test_prepare``'s ``odd_shards``: the dataset with empty, text and truncated video files,
    a missing file, an unknown class, an unknown split and a short row, prepared."""
    return request.getfixturevalue("odd_shards")


def test_dataloader_workers_survive_every_split_and_mode_with_the_longest_clip(broken_shards: Path) -> None:
    """``broken_shards``: empty, text and truncated files and bad manifest rows were left out
    by prepare; the usable videos have 3..25 frames. A 64-frame clip (longer than any video)
    in every mode, over every split, with two worker processes: no error, full batches."""
    frames = read_videos(broken_shards)
    longest = 64
    assert frames["num_frames"].max() < longest and frames["num_frames"].min() == 3
    train = TrainParams(crop_size=16, scale_jitter=(16, 24), eval_short_side=16)
    evaluate = EvaluateParams(clips=2, crops=3)
    seen = 0
    for split in ("train", "val", "test"):
        for mode, sampling in (("train", "cs"), ("val", "us"), ("test", "cs"), ("train", "us")):
            dataset = ClipDataset(broken_shards, split, sampling=sampling, clip_length=longest, mode=mode, train=train,
                                  evaluate=evaluate)
            for clips, labels in make_loader(dataset, 4, shuffle=mode == "train", num_workers=2, seed=0):
                views = (6,) if mode == "test" else ()
                assert clips.shape[1:] == (*views, 3, longest, 16, 16) and torch.isfinite(clips).all()
                seen += len(labels)
    assert seen == 4 * len(frames)  # every usable video, four times


def test_a_damaged_shard_is_refused_before_any_worker_starts(broken_shards: Path, tmp_path: Path) -> None:
    copy = tmp_path / "shards"
    copy.mkdir()
    for item in broken_shards.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    shard = sorted(copy.glob("frames-*.npy"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    train = TrainParams(crop_size=16, scale_jitter=(16, 24), eval_short_side=16)
    with pytest.raises(DataError, match=r"frames-\d+\.npy: .*run the prepare stage first"):
        ClipDataset(copy, "train", sampling="cs", clip_length=8, mode="train", train=train)


def test_an_annotation_path_cannot_escape_the_output_folder(tmp_path: Path) -> None:
    """``../`` in an annotation line names the video, never where the import writes."""
    root, lists, out = tmp_path / "videos", tmp_path / "lists", tmp_path / "out"
    (root / "A").mkdir(parents=True)
    (root / "A" / "v_1.avi").write_bytes(b"video")
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 A\n")
    (lists / "trainlist01.txt").write_text(f"../../{tmp_path.name}/videos/A/v_1.avi 1\n")
    (lists / "testlist01.txt").write_text("A/v_1.avi\n")
    listing = import_dataset("ucf101", root, lists, out)
    assert [e.path for e, _ in listing.videos] == ["A/v_1.avi"]
    assert [p.reason for p in listing.problems] == ["video A/v_1.avi is listed more than once"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lists", "out", "videos"]
    assert (out / "videos" / "A" / "v_1.avi").resolve() == (root / "A" / "v_1.avi").resolve()


# --- a full disk and a read-only folder -----------------------------------------------------


def _import_args(tmp_path: Path) -> list[str]:
    (tmp_path / "clips").mkdir(exist_ok=True)
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "clips" / name).write_bytes(b"video")
    (tmp_path / "list.csv").write_text("path,label,split\na.mp4,cat,train\nb.mp4,dog,test\n")
    return ["data", "import", "--format", "csv", "--root", str(tmp_path / "clips"),
            "--annotations", str(tmp_path / "list.csv"), "--out", str(tmp_path / "data"), "--copy"]


@pytest.mark.parametrize(("code", "advice"), [
    (28, "No space left on device; free some space there and run the command again; finished work is kept"),
    (30, "Read-only file system; the file system is read-only: run from a writable folder (or remount it read-write)"),
])
def test_a_full_disk_or_read_only_folder_is_one_line_naming_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     code: int, advice: str) -> None:
    from click.testing import CliRunner

    from opplan.cli import cli

    args = _import_args(tmp_path)
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    (tmp_path / "list.csv").write_text("path,label,split\na.mp4,cow,train\nb.mp4,dog,test\n")

    def refuse(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code))  # as a failed write: no file name

    monkeypatch.setattr(os, "replace", refuse)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"opplan: error: {tmp_path / 'data'}/") and line.endswith(advice), line
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    assert after == before  # nothing lost, no temporary file left


def test_a_stage_script_reports_a_full_disk_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    sys.path.insert(0, str(ROOT / "pipeline"))
    try:
        from _stage import run_stage
    finally:
        sys.path.remove(str(ROOT / "pipeline"))

    def work(params: object) -> None:  # a library wrapping the OSError: it is found in the chain
        raise RuntimeError("wrapped") from OSError(28, "No space left on device", "shards/frames-00000.npy")

    monkeypatch.setattr(sys, "argv", ["prepare.py", str(ROOT / "params.yaml")])
    with pytest.raises(SystemExit) as info:
        run_stage(work)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "opplan: error: shards/frames-00000.npy: No space left on device; free some space there and run the "
        "command again; finished work is kept")
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_stage(lambda params: 1 / 0)


# --- a transition that diverges on one route --------------------------------------------------


@pytest.mark.slow
def test_one_diverging_route_fails_and_the_plan_goes_on_through_the_other(
        tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training at clip length 4 blows up (its inputs turn infinite, so the loss is NaN).
    Routes: S0 -> cs/4/0.02 -> {cs/8/0.02, cs/4/0.002} -> cs/8/0.002 and S0 -> cs/8/0.02 -> cs/8/0.002."""
    from opplan.stages.plan import run_plan

    real_train_epoch = train_setup.train_epoch

    def poisoned(model, loader, *args, **kwargs):  # noqa: ANN001, ANN202 - same signature as train_epoch
        def batches():
            for clips, labels in loader:
                yield (clips * float("inf") if clips.shape[2] == 4 else clips), labels
        return real_train_epoch(model, batches(), *args, **kwargs)

    monkeypatch.setattr(train_setup, "train_epoch", poisoned)
    monkeypatch.chdir(tmp_path)
    params = tiny_params(tiny_shards, tmp_path / "mlflow.db", max_epochs=1)
    result = run_plan(params)

    assert [s.name for s in result.path] == ["S0", "cs/8/0.02", "cs/8/0.002"]
    runs = {(r.data.tags[t.TAG_SRC], r.data.tags[t.TAG_DST]): r for r in transition_runs(params)}
    failed = runs[("S0", "cs/4/0.02")]
    assert failed.data.tags[t.TAG_STATUS] == t.STATUS_FAILED
    assert "training loss became nan" in failed.data.tags[t.TAG_FAILURE]
    assert {k for k, r in runs.items() if r.data.tags[t.TAG_STATUS] == t.STATUS_FINISHED} == {
        ("S0", "cs/8/0.02"), ("cs/8/0.02", "cs/8/0.002")}
    document = json.loads((tmp_path / "plan.json").read_text())
    assert document["path"] == ["S0", "cs/8/0.02", "cs/8/0.002"] and document["score"] is not None
    assert {tuple(e) for e in document["skipped"]} == {("cs/4/0.02", "cs/8/0.02"), ("cs/4/0.02", "cs/4/0.002"),
                                                      ("cs/4/0.002", "cs/8/0.002")}
    explored = {(r["src"], r["dst"]): r for r in document["explored"]}
    assert explored[("S0", "cs/4/0.02")]["status"] == "failed" and explored[("S0", "cs/4/0.02")]["score"] is None


# --- checkpoints that are not what they claim ------------------------------------------------------

NUM_CLASSES = 4


def tiny(name: str = "dg_p3d_tiny", width: int = 8, num_classes: int = NUM_CLASSES, seed: int = 0):
    """A small model and its identity."""
    torch.manual_seed(seed)
    config = ModelParams(name=name, width=width)
    return build_model(name, num_classes, width=width), model_identity(config.model_dump(mode="json"), num_classes)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items()), "the refused checkpoint was half-loaded"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model checkpoint of ``tiny()`` (seed 1)."""
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    model, identity = tiny(seed=1)
    save_model(path, model, identity, epochs=3)
    return path


def test_a_matching_checkpoint_loads(saved: Path) -> None:
    model, identity = tiny(seed=2)
    assert load_model(saved, model, identity) == {"epochs": 3}
    reference, _ = tiny(seed=1)
    assert_untouched(model, weights(reference))


@pytest.mark.parametrize(("other", "fragments"), [
    ({"name": "p3d_tiny"}, ["different model or config", "'name': 'dg_p3d_tiny'", "'name': 'p3d_tiny'"]),
    ({"width": 16}, ["different model or config", "'width': 8", "'width': 16"]),
    ({"num_classes": 5}, ["num_classes: checkpoint has 4, this run needs 5"]),
])
def test_a_checkpoint_of_another_model_or_config_is_refused(saved: Path, other: dict, fragments: list[str]) -> None:
    model, identity = tiny(**other)
    before = weights(model)
    with pytest.raises(OpplanError) as info:
        load_model(saved, model, identity)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert_untouched(model, before)


class NotAllowed:
    """An arbitrary class in a pickle: ``weights_only=True`` must refuse to build it."""


@pytest.mark.parametrize(("damage", "fragment"), [
    ("truncated", "not a readable checkpoint"),
    ("empty", "not a readable checkpoint"),
    ("text", "not a readable checkpoint"),
    ("arbitrary_object", "not a readable checkpoint"),
    ("plain_state_dict", "not an opplan checkpoint (expected format 'opplan-checkpoint-v1', found a plain state_dict"),
    ("list", "not an opplan checkpoint"),
    ("no_identity", "damaged opplan checkpoint"),
    ("wrong_shapes", "do not fit this model"),
    ("missing_key", "missing"),
    ("missing_file", "checkpoint not found"),
])
def test_a_damaged_or_foreign_file_is_refused_and_nothing_is_loaded(saved: Path, tmp_path: Path, damage: str,
                                                                     fragment: str) -> None:
    model, identity = tiny(seed=3)
    path = tmp_path / "model.pt"
    good = torch.load(saved, weights_only=True)
    if damage == "truncated":
        path.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("this is not a checkpoint\n")
    elif damage == "arbitrary_object":
        torch.save({"format": FORMAT, "identity": identity, "state_dict": {}, "info": NotAllowed()}, path)
    elif damage == "plain_state_dict":
        torch.save(model.state_dict(), path)
    elif damage == "list":
        torch.save([1, 2], path)
    elif damage == "no_identity":
        torch.save({"format": FORMAT, "state_dict": good["state_dict"]}, path)
    elif damage == "wrong_shapes":  # same identity, tampered weights: the first tensors fit, one does not
        state = dict(good["state_dict"])
        last = [k for k, v in state.items() if v.dim() > 0][-1]
        state[last] = torch.zeros(*state[last].shape[:-1], state[last].shape[-1] + 1)
        torch.save({**good, "state_dict": state}, path)
    elif damage == "missing_key":
        state = dict(good["state_dict"])
        state.pop(next(iter(state)))
        torch.save({**good, "state_dict": state}, path)
    before = weights(model)
    with pytest.raises(OpplanError) as info:
        load_model(path, model, identity)
    assert fragment in str(info.value) and str(path) in str(info.value)
    assert_untouched(model, before)


def test_epoch_states_of_another_config_or_damaged_are_refused(tmp_path: Path) -> None:
    model, identity = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "epoch_001.pt"
    save_epoch_state(path, model=model, optimizer=optimizer, identity=identity, epoch=1, curve=[0.1, 0.2],
                     losses=[1.0], seconds=[0.5])
    state = load_epoch_state(path, identity)
    assert state["epoch"] == 1 and state["curve"] == [0.1, 0.2]
    _, wider = tiny(width=16)
    with pytest.raises(OpplanError, match="different model or config"):
        load_epoch_state(path, wider)
    damaged = tmp_path / "epoch_002.pt"
    torch.save({**state, "curve": None}, damaged)
    with pytest.raises(OpplanError, match="damaged epoch state .*curve"):
        load_epoch_state(damaged, identity)
    damaged.write_bytes(path.read_bytes()[:100])
    with pytest.raises(OpplanError, match="not a readable checkpoint"):
        load_epoch_state(damaged, identity)
    torch.save(model.state_dict(), damaged)
    with pytest.raises(OpplanError, match="not an opplan checkpoint"):
        load_epoch_state(damaged, identity)
