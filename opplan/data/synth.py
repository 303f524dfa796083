"""A seeded demo dataset: small action-recognition videos written as real H.264 mp4 files.

The classes are built so that the planner's choices matter (docs/design.md §2, the paper's
§5.4 discussion of SS-V2):

- appearance alone: ``CrossWander``, ``RingWander`` (shape of the moving object);
- short-range motion: ``SquareRise``/``SquareFall`` (direction) and ``SquareShake``
  (a fast 4-frame jitter that consecutive frames see and sparse uniform sampling
  tends to alias away);
- the whole video: ``SquareColourChange`` (colour switches in the last third, vs
  ``SquareWander`` where nothing happens), ``SquareUpDown`` (rise then fall back:
  any short window looks like Rise or Fall), ``SquareHitsWall`` vs
  ``SquareStopsShort`` (identical until the last quarter, "almost but not quite").

Every direction class is vertical and the wall classes move towards a wall on a
random side, so a horizontal flip never changes a label: ``train.flip`` may stay on.
Everything the label depends on happens inside the central square of the frame, so
a centre crop sees it; the margins hold only background and distractors.

Each video has its own generator, seeded from ``(seed, class index, video number)``:
the same seed gives the same pixels, and more videos per class keep the first ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from opplan.data.manifest import Entry, write_dataset
from opplan.fileio import atomic_open, atomic_write_text

log = logging.getLogger(__name__)

PALETTE = np.array(
    [(220, 40, 40), (40, 200, 60), (50, 90, 230), (230, 210, 40), (210, 50, 200), (40, 200, 210)], dtype=np.float32
)
ANNOTATIONS_DIR = "ucfTrainTestlist"
VIDEOS_DIR = "videos"


@dataclass(frozen=True)
class SynthConfig:
    """What ``opplan data synth`` makes; the defaults give ~300 videos, ~10 MB."""

    seed: int = 0
    train_per_class: int = 24
    test_per_class: int = 6
    num_classes: int | None = None
    """Use only the first this many classes of :data:`CLASSES` (None: all ten)."""
    width: int = 80
    height: int = 64
    min_frames: int = 32
    max_frames: int = 96
    fps: int = 25
    crf: int = 26
    """x264 quality (lower = better and larger)."""

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2 or self.height < 32 or self.width < self.height:
            raise ValueError(f"frames must be even, landscape and >= 32 px high, got {self.width}x{self.height}")
        if not 4 <= self.min_frames <= self.max_frames:
            raise ValueError(f"need 4 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        if self.train_per_class < 1 or self.test_per_class < 0:
            raise ValueError("need at least one training video per class")


@dataclass(frozen=True)
class _Scene:
    """Geometry of one frame size; ``s`` scales the 64-pixel-high design."""

    width: int
    height: int

    @property
    def s(self) -> float:
        return self.height / 64

    @property
    def centre(self) -> tuple[float, float]:
        return self.width / 2, self.height / 2

    def box(self) -> tuple[float, float, float, float]:
        """Where the main object's centre may go: (x0, x1, y0, y1), inside the centre crop."""
        cx, cy = self.centre
        return cx - 13 * self.s, cx + 13 * self.s, cy - 16 * self.s, cy + 16 * self.s


# --- trajectories: (n,) float arrays of object centres ---------------------------------


def _fold(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect positions into [lo, hi] (an object bouncing off the box walls)."""
    span = hi - lo
    d = np.mod(p - lo, 2 * span)
    return lo + np.where(d > span, 2 * span - d, d)


def _wander(rng: np.random.Generator, n: int, lo: float, hi: float, sigma: float) -> np.ndarray:
    """A smooth random walk: AR(1) velocities, integrated, bounced into [lo, hi]."""
    noise = rng.normal(0.0, sigma, n)
    v = np.empty(n)
    v[0] = noise[0] * 2
    for t in range(1, n):
        v[t] = 0.9 * v[t - 1] + noise[t]
    return _fold(rng.uniform(lo, hi) + np.cumsum(v) - v[0], lo, hi)


def _conveyor(rng: np.random.Generator, displacement: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Motion by ``displacement`` that wraps around [lo, hi] (leaves at one end, comes back
    at the other), so a steady direction lasts any number of frames."""
    return lo + np.mod(rng.uniform(lo, hi) - lo + displacement, hi - lo)


# --- classes ---------------------------------------------------------------------------

# A class: rng, n frames, scene -> (x, y, shape, colour index per frame, wall side or 0)
Track = tuple[np.ndarray, np.ndarray, str, np.ndarray, int]


def _wanderer(shape: str) -> Callable[[np.random.Generator, int, _Scene], Track]:
    def make(rng: np.random.Generator, n: int, scene: _Scene) -> Track:
        x0, x1, y0, y1 = scene.box()
        x, y = _wander(rng, n, x0, x1, 0.35 * scene.s), _wander(rng, n, y0, y1, 0.35 * scene.s)
        return x, y, shape, np.full(n, rng.integers(len(PALETTE))), _random_wall(rng)

    return make


def _random_wall(rng: np.random.Generator) -> int:
    """Half of the videos without a wall event get a wall anyway, as a distractor."""
    return int(rng.choice([-1, 0, 0, 1]))


def _shake(rng: np.random.Generator, n: int, scene: _Scene) -> Track:
    x0, x1, y0, y1 = scene.box()
    jitter = 3 * scene.s * np.where(((np.arange(n) + rng.integers(4)) // 2) % 2 == 0, 1.0, -1.0)
    x = _wander(rng, n, x0, x1, 0.2 * scene.s)
    y = _wander(rng, n, y0 + 3 * scene.s, y1 - 3 * scene.s, 0.2 * scene.s) + jitter
    return x, y, "square", np.full(n, rng.integers(len(PALETTE))), _random_wall(rng)


SPEED = (0.6, 1.0)
"""Vertical speeds in pixels per frame (at 64 px high): a few frames show the direction."""


def _vertical(direction: int) -> Callable[[np.random.Generator, int, _Scene], Track]:
    def make(rng: np.random.Generator, n: int, scene: _Scene) -> Track:
        x0, x1, y0, y1 = scene.box()
        x = _wander(rng, n, x0, x1, 0.15 * scene.s)
        y = _conveyor(rng, direction * rng.uniform(*SPEED) * scene.s * np.arange(n), y0, y1)
        return x, y, "square", np.full(n, rng.integers(len(PALETTE))), _random_wall(rng)

    return make


def _up_down(rng: np.random.Generator, n: int, scene: _Scene) -> Track:
    """Up for the first 40-60% of the video, then down, at Rise/Fall speeds: any window
    that does not hold the turn looks like Rise or like Fall."""
    x0, x1, y0, y1 = scene.box()
    turn = int(rng.uniform(0.4, 0.6) * n)
    up, down = rng.uniform(*SPEED, 2) * scene.s
    t = np.arange(n)
    y = _conveyor(rng, np.where(t <= turn, -up * t, -up * turn + down * (t - turn)), y0, y1)
    x = _wander(rng, n, x0, x1, 0.15 * scene.s)
    return x, y, "square", np.full(n, rng.integers(len(PALETTE))), _random_wall(rng)


def _colour_change(rng: np.random.Generator, n: int, scene: _Scene) -> Track:
    x, y, shape, colour, wall = _wanderer("square")(rng, n, scene)
    change = int(rng.uniform(0.67, 0.9) * n)
    colour = colour.copy()
    colour[change:] = (colour[0] + rng.integers(1, len(PALETTE))) % len(PALETTE)
    return x, y, shape, colour, wall


def _to_wall(reaches: bool) -> Callable[[np.random.Generator, int, _Scene], Track]:
    """Towards a wall on a random side; arrives (or stops short) in the last 30%."""

    def make(rng: np.random.Generator, n: int, scene: _Scene) -> Track:
        x0, x1, y0, y1 = scene.box()
        side = int(rng.choice([-1, 1]))
        contact = x1 if side > 0 else x0
        target = contact - side * (0 if reaches else rng.uniform(7, 10) * scene.s)
        arrive = max(int(rng.uniform(0.7, 0.9) * n), 1)
        speed = min(rng.uniform(0.2, 0.35) * scene.s, (x1 - x0 - 8 * scene.s) / arrive)
        t = np.minimum(np.arange(n), arrive)
        x = target - side * speed * (arrive - t)
        y = np.full(n, rng.uniform(y0 + 4 * scene.s, y1 - 4 * scene.s)) + _wander(
            rng, n, -2 * scene.s, 2 * scene.s, 0.1 * scene.s
        )
        return x, y, "square", np.full(n, rng.integers(len(PALETTE))), side

    return make


CLASSES: dict[str, Callable[[np.random.Generator, int, _Scene], Track]] = {
    "CrossWander": _wanderer("cross"),
    "RingWander": _wanderer("ring"),
    "SquareWander": _wanderer("square"),
    "SquareShake": _shake,
    "SquareRise": _vertical(-1),
    "SquareFall": _vertical(+1),
    "SquareUpDown": _up_down,
    "SquareColourChange": _colour_change,
    "SquareHitsWall": _to_wall(True),
    "SquareStopsShort": _to_wall(False),
}
"""Class name -> trajectory maker, in class-index order."""


# --- drawing ---------------------------------------------------------------------------


def _mask(shape: str, half: int) -> np.ndarray:
    """(2*half+1, 2*half+1) bool mask of a shape."""
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    r = np.hypot(xx, yy)
    if shape == "square":
        return np.ones_like(r, dtype=bool)
    if shape == "ring":
        return (r <= half + 0.5) & (r >= half * 0.5)
    if shape == "cross":
        arm = max(1, round(half / 3))
        return (np.abs(xx) <= arm) | (np.abs(yy) <= arm)
    if shape == "disc":
        return r <= half + 0.5
    raise ValueError(shape)


def _blit(frame: np.ndarray, mask: np.ndarray, cx: float, cy: float, colour: np.ndarray) -> None:
    """Paint ``colour`` where ``mask`` (centred at cx, cy) lies inside ``frame`` (H, W, 3)."""
    half = mask.shape[0] // 2
    top, left = int(round(cy)) - half, int(round(cx)) - half
    h, w = frame.shape[:2]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + mask.shape[0], h), min(left + mask.shape[1], w)
    if y0 >= y1 or x0 >= x1:
        return
    frame[y0:y1, x0:x1][mask[y0 - top : y1 - top, x0 - left : x1 - left]] = colour


def _background(rng: np.random.Generator, scene: _Scene) -> np.ndarray:
    """(H, W, 3) float: a random two-colour gradient plus coarse static texture."""
    h, w = scene.height, scene.width
    a, b = rng.uniform(20, 110, 3), rng.uniform(20, 110, 3)
    ramp = np.linspace(0, 1, w if rng.random() < 0.5 else h)
    grad = a + (b - a) * ramp[:, None]
    grad = grad[None, :, :] if len(ramp) == w else grad[:, None, :]
    cell = max(2, round(4 * scene.s))
    coarse = rng.normal(0, 10, (h // cell + 1, w // cell + 1, 1))
    texture = np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:h, :w]
    return np.broadcast_to(grad, (h, w, 3)) + texture


def render(class_name: str, rng: np.random.Generator, num_frames: int, width: int, height: int) -> np.ndarray:
    """The frames of one video of ``class_name``: uint8 (T, H, W, 3), RGB."""
    scene = _Scene(width, height)
    s = scene.s
    x, y, shape, colour, wall = CLASSES[class_name](rng, num_frames, scene)
    background = _background(rng, scene)
    if wall:
        cx, cy = scene.centre
        left = int(round(cx + wall * 20 * s - (3 * s if wall < 0 else 0)))
        top, bottom = int(round(cy - 22 * s)), int(round(cy + 22 * s))
        background[top:bottom, left : left + max(2, round(3 * s))] = rng.uniform(170, 230)
    main = _mask(shape, round(7 * s))
    dots = [(_wander(rng, num_frames, 0, width, 0.5 * s), _wander(rng, num_frames, 0, height, 0.5 * s),
             PALETTE[rng.integers(len(PALETTE))] * rng.uniform(0.6, 1.0)) for _ in range(int(rng.integers(2, 4)))]
    dot = _mask("disc", round(3 * s))
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    flicker = rng.normal(0, 3, num_frames)
    for t in range(num_frames):
        frame = background + flicker[t]
        for dx, dy, dc in dots:
            _blit(frame, dot, dx[t], dy[t], dc)
        _blit(frame, main, x[t], y[t], PALETTE[colour[t]])
        frame += rng.normal(0, 4, frame.shape)
        np.clip(frame, 0, 255, out=frame)
        frames[t] = frame
    return frames


# --- writing ---------------------------------------------------------------------------


def video_codec() -> str:
    """``libx264`` when PyAV's FFmpeg has it, else ``mpeg4`` (logged)."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # noqa: BLE001 - PyAV raises several types for a missing codec
        log.warning("libx264 is not available in this PyAV build: writing MPEG-4 Part 2 video instead of H.264")
        return "mpeg4"


def write_video(path: str | Path, frames: np.ndarray, *, fps: int = 25, codec: str = "libx264", crf: int = 26) -> None:
    """Encode uint8 (T, H, W, 3) RGB frames into an mp4 file, atomically."""
    with atomic_open(path, "wb") as handle:
        with av.open(handle, "w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            # Byte-identical files run to run (docs/determinism.md): one thread, and no x264
            # macroblock-tree rate control, whose lookahead read memory that differs from run
            # to run (with it, ~1 video in 5 of the demo changed between two runs, same seed).
            stream.codec_context.thread_count = 1
            if codec == "libx264":
                stream.options = {"crf": str(crf), "preset": "fast", "x264-params": "mbtree=0"}
            else:
                stream.codec_context.bit_rate = 400_000
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())


def synthesize(out: str | Path, config: SynthConfig = SynthConfig()) -> list[Entry]:
    """Write the demo dataset into ``out``: ``videos/<Class>/v_<Class>_NNN.mp4``,
    UCF101-style lists under ``ucfTrainTestlist/`` and ``manifest.csv`` + ``classes.txt``.

    Returns the manifest entries.
    """
    out = Path(out)
    names = list(CLASSES)[: config.num_classes]
    codec = video_codec()
    start = time.perf_counter()
    entries = []
    per_class = config.train_per_class + config.test_per_class
    for ci, name in enumerate(names):
        for i in range(per_class):
            rng = np.random.default_rng([config.seed, ci, i])
            n = int(rng.integers(config.min_frames, config.max_frames + 1))
            rel = f"{name}/v_{name}_{i + 1:03d}.mp4"
            frames = render(name, rng, n, config.width, config.height)
            write_video(out / VIDEOS_DIR / rel, frames, fps=config.fps, codec=codec, crf=config.crf)
            entries.append(Entry(f"{VIDEOS_DIR}/{rel}", name, "train" if i < config.train_per_class else "test"))
        log.info("synth: %d/%d classes written (%.1f s)", ci + 1, len(names), time.perf_counter() - start)
    _write_ucf_lists(out / ANNOTATIONS_DIR, entries, names)
    write_dataset(out, entries, names)
    size = sum(p.stat().st_size for p in (out / VIDEOS_DIR).rglob("*.mp4"))
    log.info("synth: %d videos of %d classes (%s, %.1f MB) in %s, %.1f s",
             len(entries), len(names), codec, size / 2**20, out, time.perf_counter() - start)
    return entries


def _write_ucf_lists(folder: Path, entries: list[Entry], names: list[str]) -> None:
    """``classInd.txt``, ``trainlist01.txt`` ("Class/v.mp4 k"), ``testlist01.txt`` ("Class/v.mp4")."""
    index = {name: i + 1 for i, name in enumerate(names)}
    prefix = f"{VIDEOS_DIR}/"
    atomic_write_text(folder / "classInd.txt", "".join(f"{i} {name}\n" for name, i in index.items()))
    atomic_write_text(folder / "trainlist01.txt", "".join(
        f"{e.path.removeprefix(prefix)} {index[e.label]}\n" for e in entries if e.split == "train"))
    atomic_write_text(folder / "testlist01.txt", "".join(
        f"{e.path.removeprefix(prefix)}\n" for e in entries if e.split == "test"))
