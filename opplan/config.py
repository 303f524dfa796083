"""``params.yaml``'s schema: typed, validated, frozen settings.

One section per stage plus shared settings. Every key is documented where its default
is defined and validated once, on load (PySlowFast's ``assert_and_infer_cfg``, without
its mutable global). Unknown keys, wrong types and out-of-range values are refused;
:mod:`opplan.params_file` reads the file and turns a refusal into errors that name the
file, the line, the key, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from opplan.planning import fitting
from opplan.planning.graph import DECISIONS, KINDS, SAMPLINGS, State

_log = logging.getLogger(__name__)

Sampling = Literal[SAMPLINGS]
# Every number is bounded by what the program can take (docs/design.md §12): past these, a setting
# only overflows (seeds), exhausts memory (sizes, shards) or never ends (epochs, horizons).
PositiveInt = Annotated[int, Field(gt=0, le=10**6)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Pixels = Annotated[int, Field(gt=0, le=1024)]
"""A frame side or crop: decoding and resizing beyond 1024 pixels exhausts memory (paper: 256)."""
ClipLength = Annotated[int, Field(gt=0, le=1024)]
Epochs = Annotated[int, Field(gt=0, le=100_000)]
Workers = Annotated[int, Field(gt=0, le=256)]
Name = Annotated[str, Field(min_length=1, max_length=256)]
PathSetting = Annotated[str, Field(min_length=1, max_length=4096)]


class _Section(BaseModel):
    # allow_inf_nan=False: ``.inf`` and ``.nan`` are refused for every float setting
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False,
                              use_attribute_docstrings=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_blank_text(cls, v: Any) -> Any:
        if isinstance(v, str) and (v != v.strip() or "\0" in v):
            raise ValueError("must not have surrounding blanks or a NUL character")
        return v


class DataParams(_Section):
    root: PathSetting = "data"
    """Dataset folder holding ``manifest.csv`` (from ``opplan data synth`` or ``opplan data import``)."""


class PrepareParams(_Section):
    out: PathSetting = "shards"
    """Folder the frame shards, frame counts, splits and the bad-video report go to."""
    short_side: Pixels = 256
    """Frames are resized so that their shorter side has this many pixels."""
    max_frames: Annotated[int, Field(gt=0, le=100_000)] | None = None
    """Keep at most this many frames per video (uniformly subsampled); null keeps all."""
    fps: Annotated[float, Field(gt=0, le=1000)] | None = None
    """Resample to this frame rate first (frames picked at the nearest earlier time; a
    slower video keeps all its frames); null keeps the video's own rate. Frame folders carry
    no rate: a dataset with one is refused unless this is null."""
    codec: Literal["raw", "jpeg"] = "raw"
    """How shards store frames: raw uint8 RGB, or JPEG images decoded in the loader workers
    (docs/design.md "Frame shards")."""
    quality: Annotated[int, Field(ge=1, le=100)] = 90
    """JPEG quality of ``codec: jpeg``."""
    val_size: PositiveInt | Annotated[float, Field(gt=0, lt=1)] | None = None
    """Internal validation size: a count, a fraction of the training set, or null for
    the size of the original validation split (docs/design.md §5)."""
    max_bad_fraction: Fraction = 0.05
    """Fail when more than this fraction of the videos cannot be decoded."""
    shard_mb: Annotated[int, Field(gt=0, le=4096)] = 256
    """Target size of one frame shard file in MiB (held in memory while it is written). A video
    is never split across shards: one whose stored frames exceed this gets a shard of its own, of
    its own size (a raw 5-minute video at 30 fps and short side 128 is about 470 MiB), and a video is
    held whole in memory while it is decoded. ``max_frames`` bounds both."""
    workers: Workers = 2
    """Decoding processes."""


class ModelParams(_Section):
    name: Name = "dg_p3d_tiny"
    """Registered model name (``opplan model-info --list``)."""
    dropout: Fraction = 0.5
    """Dropout before the classifier."""
    width: Annotated[int, Field(gt=0, le=4096)] | None = None
    """Channels of the stem; null takes the registered model's own (ResNet bodies: 64,
    the ``*_tiny`` CPU models: 16). torchvision's models accept only null or 64."""
    depth: Literal[10, 14, 18, 26, 50, 101] | None = None
    """ResNet depth of the P3D body; null takes the registered model's own (``*_tiny``: 14,
    one bottleneck block per stage). 10 and 18 use basic blocks, the others bottlenecks."""
    init: PathSetting | None = None
    """``imagenet:PATH`` inflates a torchvision 2D ResNet ``state_dict`` from a local file;
    ``checkpoint:PATH`` starts from a 3D model's weights: opplan's own ``final/model.pt`` or a
    torchvision video model ``state_dict`` (``r3d_18``, ``mc3_18``, ``r2plus1d_18``), the
    classifier replaced when the number of classes differs (docs/design.md §7)."""
    bn_freeze_min_length: ClipLength = 64
    """With clips at least this long, every BatchNorm but the first is frozen (docs/design.md §7)."""


class TrainParams(_Section):
    crop_size: Pixels = 224
    """Side of the square training crop (and of planning's validation crop)."""
    scale_jitter: tuple[Annotated[int, Field(gt=0, le=2048)], Annotated[int, Field(gt=0, le=2048)]] = (256, 340)
    """Training frames are resized to a random short side in this range, then cropped."""
    eval_short_side: Annotated[int, Field(gt=0, le=2048)] = 256
    """Validation and test frames are resized to this short side, then centre-cropped."""
    flip: bool = True
    """Random horizontal flip; switch off for direction-sensitive datasets (SSv2)."""
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """SGD momentum."""
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 1e-4
    """SGD weight decay (L2), on every parameter but the fusion weights."""
    batch_size: PositiveInt = 8
    """Clips per optimizer step, over all processes (each process loads an equal share)."""
    batch_size_per_length: dict[ClipLength, PositiveInt] = {}
    """Clips per optimizer step for a given clip length, overriding ``batch_size``. To fit long
    clips in memory without changing the step, set ``micro_batch_per_length`` instead (the
    authors keep the step's batch constant)."""
    eval_batch_size: PositiveInt = 16
    """Clips per batch when planning scores internal validation."""
    num_workers: Annotated[int, Field(ge=0, le=256)] | Literal["auto"] = "auto"
    """DataLoader worker processes per training process. ``auto``: on CUDA, the CPU cores
    this process may use, shared by the processes on its node, less one for the main
    process, at most 8 (docs/gpu.md: more workers were slower on one H200 node); on CPU, a
    quarter of the cores, at most 4, since the model itself computes on the CPU. Workers
    persist across the epochs of a transition or schedule segment (reseeded per epoch) and
    run one torch thread each."""
    prefetch_factor: Annotated[int, Field(gt=0, le=64)] = 4
    """Batches each worker loads ahead (DataLoader ``prefetch_factor``); unused without workers."""
    micro_batch_per_length: dict[ClipLength, PositiveInt] = {}
    """Most clips of a given length that one device puts through forward/backward at once.
    A larger per-process batch is split into micro-batches whose gradients accumulate
    before the one optimizer step (the authors' ``iter_size``); BatchNorm then sees the
    micro-batch. Lengths not listed are not split."""
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    """Mixed precision on CUDA (``torch.autocast``); always off on CPU. ``bf16``: bfloat16, no
    gradient scaler; ``fp16``: float16 with a gradient scaler; ``auto``: bf16 where the GPU
    supports it (Ampere and later), else fp16. The boolean of earlier versions is still
    read: ``true`` is ``fp16`` (what it meant), ``false`` is ``off``. YAML reads a bare
    ``off`` as false, which is ``off`` too."""
    deterministic: bool = True
    """Deterministic kernels (docs/determinism.md). Off: cuDNN benchmark mode picks the
    fastest kernels, which are not bit-reproducible on GPU; measured cost of on: 8-22 % on
    one H200 (docs/gpu.md). Makes no difference on CPU."""
    channels_last: Literal["auto", "on", "off"] = "auto"
    """Channels-last (NDHWC) memory layout for the model and its input on CUDA. ``auto``: on
    for the models measured to gain from it (torchvision's r2plus1d_18 and r3d_18, +50 %;
    the P3D models lose 2-10 %, docs/gpu.md), off elsewhere and on CPU. YAML's bare
    on/off are read as booleans, which are accepted."""
    compile: Literal["off", "default", "reduce-overhead"] = "off"
    """``torch.compile`` the model on CUDA: ``default`` (measured +10 % on DG-P3D R50, after
    ~80 s of compilation per model), ``reduce-overhead`` (CUDA graphs, for small
    launch-bound models). Off on CPU."""
    cpu_isa: Literal["native", "avx2"] = "native"
    """Instruction set of torch's CPU kernels. ``native``: the fastest this CPU has (AVX-512 and
    AMX where present). ``avx2``: capped at AVX2, so that any x86-64 machine with AVX2 computes
    the same floating-point results from the same seed and thread count (docs/determinism.md,
    "Across machines"); costs about 45 % more CPU time per step on an AVX-512 machine. No
    effect on GPU kernels."""
    cpu_threads: Annotated[int, Field(gt=0, le=1024)] | None = None
    """Torch threads per training process on CPU. null: all the cores this process may use,
    split between planning workers (``plan.workers``). The number of threads changes the
    order of floating-point sums, so pin it (with ``cpu_isa``) to get the same results on
    machines with other core counts."""
    val_cache_mb: Annotated[float, Field(ge=0)] = 2048.0
    """Planning's decoded validation clips are kept in memory (per process) across the epochs of
    a transition, and across transitions into the same clip length and sampling, when one
    pass's clips fit in this many MB; 0: decode them every epoch. Same numbers either way."""
    progress_seconds: Annotated[float, Field(ge=0)] = 60.0
    """Log progress within a training or evaluation pass (clips done, clips/s, ETA) at most
    this often; 0 logs every batch. A pass shorter than this logs nothing extra."""

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_from_bool(cls, v: Any) -> Any:
        return ("fp16" if v else "off") if isinstance(v, bool) else v

    @field_validator("channels_last", "compile", mode="before")
    @classmethod
    def _switch_from_bool(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, bool):
            return ("on" if info.field_name == "channels_last" else "default") if v else "off"
        return v
    lr_factor_per_length: dict[ClipLength, Annotated[float, Field(gt=0, le=1000)]] = {}
    """Factor on the planned rate for a given clip length: a state ``(s, l, r)`` trains at
    ``r * factor[l]`` (1 when not listed). The authors train their longest clips at a tenth
    of the grid's rates (docs/fidelity.md). State names and the logged ``lr`` keep ``r``."""
    nesterov: bool = False
    """Nesterov momentum (the authors' code: on)."""
    clip_grad_norm: Annotated[float, Field(gt=0, le=1e6)] | None = None
    """Clip the gradient's global L2 norm (over the trained parameters, of the batch-mean
    loss) to this before each step; null: no clipping (the authors' code: 40)."""
    head_loss: Literal["fused", "per_head", "per_head+fused"] = "fused"
    """Training loss of a dual-head model: cross-entropy of the fused logits with learnt
    fusion weights (``fused``); the sum of each head's cross-entropy with the fusion fixed at
    the average (``per_head``, the authors' code); or both sums with learnt fusion weights
    (``per_head+fused``). Single-head models always train one cross-entropy. Fusion weights
    get no weight decay."""
    snippet_length: Annotated[int, Field(gt=0, le=1024)] = 1
    """Uniform sampling (``us``) takes this many consecutive frames from each of
    ``clip_length / snippet_length`` segments (the authors: 4, the stem's temporal stride);
    1: one frame per segment. Must divide every planned clip length."""

    @model_validator(mode="after")
    def _jitter_ordered(self) -> TrainParams:
        low, high = self.scale_jitter
        if low > high:
            raise ValueError(f"scale_jitter must be [low, high] with low <= high, got {list(self.scale_jitter)}")
        if low < self.crop_size:
            raise ValueError(f"scale_jitter low ({low}) must be >= crop_size ({self.crop_size})")
        if self.eval_short_side < self.crop_size:
            raise ValueError(f"eval_short_side ({self.eval_short_side}) must be >= crop_size ({self.crop_size})")
        return self

    def batch_for(self, clip_length: int) -> int:
        """Clips per optimizer step over all processes (the batch size of one process when alone)."""
        return self.batch_size_per_length.get(clip_length, self.batch_size)

    def micro_batch_for(self, clip_length: int) -> int | None:
        return self.micro_batch_per_length.get(clip_length)

    def lr_for(self, clip_length: int, lr: float) -> float:
        """The rate the optimizer uses for a state of this clip length and planned rate ``lr``."""
        return lr * self.lr_factor_per_length.get(clip_length, 1.0)

    @field_validator("nesterov")
    @classmethod
    def _nesterov_needs_momentum(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("momentum") == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        return v


AUTHORS_PLAN: dict[str, Any] = {"graph": "basic", "val_clips": 1, "metric": "top135", "score": "fitted",
                                "decision": "argmax", "keep_start_se": None, "prune": False}
"""What ``plan.setting: authors`` sets (besides one sampling): the authors' released planning."""


class PlanParams(_Section):
    sampling: list[Sampling] = ["cs", "us"]
    """Sampling strategies to plan over; the result is the best of their final states."""
    clip_lengths: list[ClipLength] = [16, 32, 64]
    """Candidate clip lengths l1 < l2 < ... (docs/design.md §2)."""
    lrs: list[PositiveFloat] = [0.01, 0.001, 0.0001]
    """Candidate learning rates r1 > r2 > ... (docs/design.md §2)."""
    graph: Literal[KINDS] = "extended"
    """Transition graph (docs/design.md §2): ``basic`` (longer clip or lower rate) or ``extended``
    (also a lower rate with a shorter clip; the paper's default)."""
    max_jump: Annotated[int, Field(gt=0, le=1024)] = 1
    """Edges may skip up to this many steps in each of the clip-length and rate indices (docs/design.md §2)."""
    start_lengths: list[ClipLength] | None = None
    """Clip lengths S0 may go to; null means the two shortest."""
    final_states: list[str] | None = None
    """Final states written ``cs/64/0.0001``; null means (s, l_max, r_min) per sampling."""
    delay: Epochs = 10
    """Knee-stopping delay T (docs/design.md §4; paper: 10)."""
    max_epochs: Epochs = 100
    """Hard cap on the epochs of one transition."""
    fit_function: Literal[fitting.FUNCTIONS] = fitting.DEFAULT_FUNCTION
    """Function fitted to a transition's validation curve for knee stopping (docs/design.md §4, paper Table 1)."""
    score: Literal["fitted", "observed"] = "fitted"
    """V(Si -> Sj): the fitted peak f(t*) (authors' code) or the measured accuracy at t*."""
    metric: Literal["top1", "top135", "prob"] = "top1"
    """The planning signal measured on internal validation after every epoch: top-1 (the
    paper), the mean of top-1/3/5 (the authors' code) or the mean true-class probability
    (ours: moves with every video's confidence, so less noisy on few videos)."""
    val_clips: PositiveInt = 1
    """Uniformly spaced validation clips per video during planning, softmax scores averaged
    (1: the centre clip, as the paper). More clips, less noise, more validation time."""
    decision: Literal[DECISIONS] = "argmax"
    """How the DP chooses a state's predecessor and the final state: the highest V (the
    paper), or any V within plan.tie_se standard errors of the highest counts as a tie,
    broken toward fewer epochs along the path (docs/design.md, "Noise")."""
    tie_se: Annotated[float, Field(ge=0)] = 1.0
    """decision: within_se counts scores within this many SEs of the best as ties."""
    keep_start_se: Annotated[float, Field(ge=0)] | None = 1.0
    """A transition whose knee says t* = 0 keeps its start model only when the start is better
    than its best later epoch by more than this many SEs; else that epoch is kept. null: keep
    what the knee says (the paper)."""
    horizon: Epochs = 999
    """The knee t* is searched in [0, horizon]."""
    prune: bool = False
    """Stop a transition early once an optimistic bound of its score (the knee fit's peak
    plus prune_z SEs) cannot reach the best score already known for its target state, and
    run the transitions into a state most promising first (ours, beyond the paper;
    docs/design.md §10b). A pruned transition is never chosen. Off: the paper's DP."""
    prune_z: Annotated[float, Field(ge=0)] = 2.0
    """plan.prune: how many standard errors of the current point the bound adds to the fit's peak."""
    prune_min_epochs: Annotated[int, Field(ge=0)] = 10
    """plan.prune: no transition is pruned before this epoch. A curve flat for its first epochs
    that then takes off fools any fit of its start (the demo's S0 -> us/8/0.02: flat to epoch
    8, chosen in the end); bench/prune_replay.py measures what each value saves and changes."""
    setting: Literal["own", "authors"] = "own"
    """authors: the authors' released planning (docs/design.md §10c): sets
    graph basic, one sampling (the first of plan.sampling), val_clips 1, metric top135, score
    fitted, decision argmax, keep_start_se null and prune false; a key set to another value
    beside it is refused. own: every key as written."""
    workers: Workers = 1
    """Transitions trained at once, each in its own process on its own device: worker i uses
    CUDA device i when there are GPUs (at most one worker per GPU), else the CPU, its cores
    split between the workers. Only transitions whose source state's model is final run
    side by side, so the plan is the same for any number of workers; this setting is not
    part of the planning configuration, and a rerun with another number reuses the runs."""

    @model_validator(mode="after")
    def _authors_setting(self) -> PlanParams:
        if self.setting != "authors":
            return self
        for key, value in AUTHORS_PLAN.items():
            if key in self.model_fields_set and getattr(self, key) != value:
                raise ValueError(f"plan.setting: authors sets plan.{key} to {value!r}, but it is "
                                 f"{getattr(self, key)!r}: remove plan.{key} or use plan.setting: own")
            object.__setattr__(self, key, value)
        if len(self.sampling) > 1:
            if "sampling" in self.model_fields_set:
                raise ValueError(f"plan.setting: authors plans one sampling, but plan.sampling is {self.sampling}: "
                                 "keep one, or use plan.setting: own")
            object.__setattr__(self, "sampling", self.sampling[:1])
        return self

    @field_validator("clip_lengths")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if not v or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"must be a non-empty, strictly increasing list, got {v}")
        return v

    @field_validator("lrs")
    @classmethod
    def _decreasing(cls, v: list[float]) -> list[float]:
        if not v or any(b >= a for a, b in zip(v, v[1:])):
            raise ValueError(f"must be a non-empty, strictly decreasing list, got {v}")
        return v

    @field_validator("sampling")
    @classmethod
    def _unique_sampling(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must be a non-empty list of distinct values from {list(SAMPLINGS)}, got {v}")
        return v

    # Field validators (not a model validator) so that an error names the key and its line;
    # ``info.data`` holds the fields defined above, when they themselves were valid.
    @field_validator("start_lengths")
    @classmethod
    def _start_lengths_exist(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        lengths = info.data.get("clip_lengths")
        if v is not None and lengths is not None and (not v or any(l not in lengths for l in v)):
            raise ValueError(f"start_lengths {v} must be a non-empty subset of clip_lengths {lengths}")
        return v

    @field_validator("final_states")
    @classmethod
    def _states_exist(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        samplings, lengths, lrs = (info.data.get(k) for k in ("sampling", "clip_lengths", "lrs"))
        if samplings is None or lengths is None or lrs is None:
            return v  # already reported
        for name in v or []:
            try:
                state = State.parse(name)
                ok = state.sampling in samplings and state.clip_length in lengths and any(
                    math.isclose(state.lr, r, rel_tol=1e-9) for r in lrs
                )
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(
                    f"final state {name!r} is not a state of the graph: write 'sampling/clip_length/lr' "
                    f"with sampling in {samplings}, clip_length in {lengths}, lr in {lrs}"
                )
        return v


class EvaluateParams(_Section):
    clips: Annotated[int, Field(gt=0, le=1000)] = 10
    """Uniformly spaced clips per video in final testing."""
    crops: Literal[1, 3] = 3
    """Spatial crops per clip: 1 (centre) or 3 (left/centre/right or top/centre/bottom)."""
    batch_size: PositiveInt = 4
    """Videos per evaluation batch (each brings clips x crops views)."""
    crop_size: PositiveInt | None = None
    """Side of the test crops (the paper: 256, from frames at short side 256); null: the
    training ``train.crop_size``. Planning's validation always uses ``train.crop_size``."""


class FinalParams(_Section):
    match_steps: bool = False
    """Keep each planned segment's number of optimizer steps: the final stage trains on internal
    train + validation, so an epoch has more steps than it had during planning; with this on,
    each segment's epochs are scaled by train / (train + validation) videos, rounded to the
    nearest whole epoch, at least one (docs/design.md §5)."""
    seeds: PositiveInt = 1
    """Retrains of OP's path and of the validation-selected HS, with seeds ``seed``, ``seed + 1``,
    ...: the report shows their mean and spread and a paired test over the held-out videos.
    The first seed's model is the stage's output; each further seed costs one more retrain."""
    register_as: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    """Register the final model in MLflow's Model Registry under this name (a new version per
    final run), with the planning run, the path and the held-out metrics as tags; ``evaluate``
    does it, once the held-out metrics are known. null: the model is logged to the final run
    only (``runs:/<run>/model``)."""


class BaselinesParams(_Section):
    enabled: bool = True
    """Run the hand-tuned grid (docs/design.md §6); switch off when only the plan is wanted."""
    schedules: list[Literal["l1-lN", "l2-lN", "all"]] = ["l1-lN", "l2-lN", "all"]
    """Clip schedules: l1->lN, l2->lN, or l1->l2->...->lN with equal epochs per length."""
    decays: list[Literal["step", "cosine"]] = ["step", "cosine"]
    """Learning-rate decay: 3-step (the plan's rates in equal thirds) or cosine from r1."""
    sampling: list[Sampling] = ["cs", "us"]
    """Sampling strategies of the grid: consecutive (``cs``) or uniform (``us``) frames."""
    epochs: list[Epochs] = [128, 192, 256]
    """Total-epoch grid."""


class ReportParams(_Section):
    out: PathSetting = "reports"
    """Folder the report (Markdown, LaTeX tables, figures) goes to."""
    figures: bool = True
    """Draw the figures (graph with path, curves with fits, schedules); off: tables only."""
    margin: Annotated[float, Field(gt=0, le=100)] = 3.0
    """Non-inferiority margin δ of the verdict of OP against the validation-selected HS, in
    top-1 points: *OP non-inferior* when the 95 % paired interval of OP − HS lies above −δ,
    *OP better* above 0, *OP worse* below 0 and past −δ, else *inconclusive* (docs/design.md,
    "Noise"; ``opplan study`` takes its own ``delta``)."""


class TrackingParams(_Section):
    uri: PathSetting = "sqlite:///mlflow.db"
    """MLflow tracking URI; the ``MLFLOW_TRACKING_URI`` environment variable wins over it."""
    experiment: Annotated[str, Field(min_length=1, max_length=200)] = "opplan"
    """Experiment of the planning runs; baselines go to ``<experiment>-baselines``. Also the folder
    of its artifacts under ``mlartifacts/``, so it is a plain name: no ``/``, ``\\``, ``:``, and not
    ``.`` or ``..``."""

    retry_seconds: Annotated[float, Field(ge=0, le=86_400)] = 600.0
    """How long one MLflow call is retried (backoff 1, 2, 4, ... 30 s, a WARNING each) while
    the tracking server or database is unreachable, busy or failing with 5xx, before the
    stage gives up with an error. Errors that cannot go away by waiting are raised at once."""
    system_metrics_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0
    """Sampling interval of the system metrics (CPU, memory and, on CUDA, GPU utilisation and
    memory) logged as ``system/...`` into the planning, final and baseline runs while they
    train (MLflow's system-metrics monitor, :mod:`opplan.tracking.system`); 0 switches them off.
    GPU utilisation needs NVML (``nvidia-ml-py``)."""

    @field_validator("experiment")
    @classmethod
    def _experiment_is_not_a_path(cls, v: str) -> str:
        # The name becomes a folder of the local store's artifacts (mlartifacts/<experiment>):
        # a separator, a drive or a dot-name would put every run's artifacts outside the project.
        if any(c in v for c in "/\\:") or v in {".", ".."}:
            raise ValueError("must be a plain name, not a path (no '/', '\\', ':', and not '.' or '..')")
        return v


class DistributedParams(_Section):
    nproc_per_node: Workers = 1
    """Processes per node for the training stages (plan, final, evaluate, baselines). Above 1 a
    stage started without ``torchrun`` relaunches itself under ``torchrun --standalone`` with
    this many processes (DistributedDataParallel, one GPU each). A stage already started by
    ``torchrun`` (e.g. multi-node) uses torchrun's world instead. ``train.batch_size`` stays the
    batch of one optimizer step, split evenly over the processes."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """``auto``: NCCL on CUDA, gloo on CPU."""
    timeout_minutes: Annotated[int, Field(gt=0, le=10_080)] = 30
    """How long a process waits for the others (e.g. while rank 0 talks to MLflow) before failing."""


_SECTION_MODELS = {"prepare": PrepareParams, "plan": PlanParams, "train": TrainParams, "tracking": TrackingParams}

MOVED_TO_RUNTIME: dict[str, tuple[str, str]] = {
    "prepare_workers": ("prepare", "workers"),
    "plan_workers": ("plan", "workers"),
    "num_workers": ("train", "num_workers"),
    "prefetch_factor": ("train", "prefetch_factor"),
    "progress_seconds": ("train", "progress_seconds"),
    "val_cache_mb": ("train", "val_cache_mb"),
    "retry_seconds": ("tracking", "retry_seconds"),
}
"""``runtime.<name>`` -> where the setting used to be (and where the code still reads it)."""

RuntimeParams = create_model(
    "RuntimeParams", __base__=_Section, __doc__="Settings that change only how fast something runs (docs/design.md §13).",
    **{name: (_SECTION_MODELS[section].model_fields[key].annotation, copy.copy(_SECTION_MODELS[section].model_fields[key]))
       for name, (section, key) in MOVED_TO_RUNTIME.items()})
for _section, _key in MOVED_TO_RUNTIME.values():  # the sections keep them for the code, but dump them only under runtime
    _SECTION_MODELS[_section].model_fields[_key].exclude = True
for _model in _SECTION_MODELS.values():
    _model.model_rebuild(force=True)


class Params(_Section):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False, validate_default=True,
                              use_attribute_docstrings=True)
    """``validate_default``: the cross-section checks below also run for sections left out."""

    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    """Seeds numpy, torch and the split; numpy's legacy seeding takes 32 bits."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where training runs: ``auto`` takes CUDA when a GPU is visible, else the CPU."""
    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    plan: PlanParams = PlanParams()
    evaluate: EvaluateParams = EvaluateParams()
    final: FinalParams = FinalParams()
    baselines: BaselinesParams = BaselinesParams()
    report: ReportParams = ReportParams()
    tracking: TrackingParams = TrackingParams()
    distributed: DistributedParams = DistributedParams()
    runtime: RuntimeParams = RuntimeParams()  # type: ignore[valid-type]
    """Settings that change only speed; no stage depends on them (docs/design.md §13)."""

    @model_validator(mode="before")
    @classmethod
    def _runtime_in_one_place(cls, data: Any) -> Any:
        """``runtime.<name>`` is the place of a speed-only setting; its old place still works
        (with a warning) and the sections keep the value, where the code reads it."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        runtime = data.get("runtime") or {}
        runtime = dict(runtime) if isinstance(runtime, dict) else runtime.model_dump()
        for name, (section, key) in MOVED_TO_RUNTIME.items():
            value = data.get(section)
            if isinstance(value, dict) and key in value:
                if name not in runtime:
                    _log.warning("%s.%s has moved to runtime.%s; reading it from there", section, key, name)
                    runtime[name] = value[key]
                elif runtime[name] != value[key]:
                    raise ValueError(f"{section}.{key} and runtime.{name} are both set: keep runtime.{name}")
            elif isinstance(value, BaseModel) and key in value.model_fields_set:
                runtime.setdefault(name, getattr(value, key))
        for name, (section, key) in MOVED_TO_RUNTIME.items():  # validated in both places, each error named
            if name not in runtime:
                continue
            value = data.get(section)
            if isinstance(value, BaseModel):
                data[section] = value.model_copy(update={key: runtime[name]})
            elif value is None or isinstance(value, dict):  # anything else: refused by the section itself
                data[section] = {**(value or {}), key: runtime[name]}
        data["runtime"] = runtime
        return data

    @model_validator(mode="after")
    def _model_fits_plan(self) -> Params:
        if self.prepare.short_side < self.train.crop_size:
            raise ValueError(
                f"prepare.short_side ({self.prepare.short_side}) must be >= train.crop_size ({self.train.crop_size})"
            )
        return self

    # Field validators (``info.data`` holds the sections before this one) so that the error
    # names the section it is about.
    @field_validator("plan")
    @classmethod
    def _snippets_fit_clips(cls, v: PlanParams, info: ValidationInfo) -> PlanParams:
        train = info.data.get("train")
        uneven = [length for length in v.clip_lengths if train is not None and length % train.snippet_length]
        if uneven:
            raise ValueError(f"train.snippet_length ({train.snippet_length}) must divide every clip length, "
                             f"not {uneven}")
        return v

    @field_validator("evaluate")
    @classmethod
    def _test_crop_fits(cls, v: EvaluateParams, info: ValidationInfo) -> EvaluateParams:
        train = info.data.get("train")
        if train is not None and v.crop_size is not None and v.crop_size > train.eval_short_side:
            raise ValueError(f"evaluate.crop_size ({v.crop_size}) must be <= train.eval_short_side "
                             f"({train.eval_short_side})")
        return v

    def section_dict(self, *sections: str) -> dict[str, Any]:
        """The named sections as plain data (for hashing and MLflow params)."""
        dumped = self.model_dump(mode="json")
        return {name: dumped[name] for name in sections}
