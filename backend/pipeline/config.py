"""Animate124's config tree: one frozen dataclass per component, presets as values of it.

`PAPER` is Animate124's published schedule (docs/ARCHITECTURE.md); `FAST` keeps every stage
with fewer steps; `tiny` shrinks any of them for smoke runs and CPU tests (`TINY_SIZES`: the
tiny random models' own sizes). Change a leaf with `config.override(PAPER, {"static.steps": 3})`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

from ..config import override
from ..priors.sds import SD, TILE, VIDEO, ZERO123, GuidanceConfig

STAGES = ("textual_inversion", "static", "dynamic", "refine")


def _part(cls):
    """A sub-config field whose default is that component's defaults."""
    return dataclasses.field(default_factory=cls)


@dataclass(frozen=True)
class TextualInversionConfig:
    """Learning the object's token on Stable Diffusion."""

    steps: int = 3000
    """Optimisation steps."""
    size: int = 512
    """Side of the augmented views, in pixels."""
    batch: int = 16
    """Views per step."""
    lr: float = 1e-4
    """Learning rate of the token's embedding."""
    views: int = 512
    """Augmented views encoded once, then drawn from (textual_inversion.py)."""
    weight_decay: float = 1e-2
    """AdamW's decoupled weight decay on the token's embedding (the official script's
    `--adam_weight_decay` default)."""
    initializer: str = "object"
    """The word whose embedding the token starts from. Animate124's run scripts pass the
    object's class noun by hand (`panda`, `tiger`, `astronaut`); a job has no class word, so
    one word for every object."""


@dataclass(frozen=True)
class FieldConfig:
    """The canonical and motion fields and their occupancy grid."""

    grid_levels: int = 16
    """Hash-grid levels of the canonical field."""
    grid_log2_table: int = 19
    """log2 of each level's hash-table size (both fields)."""
    motion_grid_levels: int = 8
    """Hash-grid levels of the motion field (3D: its coefficients per point; the
    reconstruction fit's motion grid). Coarser than the canonical grid: a motion is smooth
    in space, and on the oracle priors a grid as fine as the canonical one learned noise."""
    motion_base_resolution: int = 4
    """The motion grid's coarsest level, cells per side."""
    motion_finest_resolution: int = 128
    """The motion grid's finest level, cells per side."""
    motion_terms: int = 8
    """Fourier terms per point of a motion that does not loop (period twice the clip: the
    fastest term turns 4 times over the clip); a looping job takes its own
    `JobOptions.motion_terms` (period the clip)."""
    occupancy_resolution: int = 128
    """Cells per side of the occupancy grid (Animate124's `grid_size` 128 in
    nerf/renderer.py)."""
    occupancy_decay: float = 0.95
    """Each update keeps per cell max(this x the kept density, the new density): a region
    that emptied fades out over updates (Animate124's `update_extra_state` decay 0.95)."""
    occupancy_threshold: float = 10.0
    """A cell is occupied where its kept density is above min(the mean kept density, this),
    density per world unit (Animate124's `--density_thresh` 10)."""
    blob_density: float = 10.0
    """The canonical density's starting blob: its log-density added at the centre
    (Animate124's `--blob_density` 10)."""
    blob_radius: float = 0.2
    """The blob's Gaussian radius in world units (Animate124's `--blob_radius` 0.2: a small
    seed at the centre of the [-1, 1] box, not a ball the object must carve from)."""


NORMALS = ("world", "canonical", "jacobian")
"""The renderer's shading normals (`RendererConfig.normals`)."""


@dataclass(frozen=True)
class RendererConfig:
    """How the SDS stages render."""

    size: int = 128
    """Side of the static and dynamic stages' renders (and of the reference view)."""
    samples: int = 64
    """Samples per ray."""
    normals: str = "world"
    """Shading normals (`field.render.Renderer`): "world" is Animate124's (the density at
    the sample's time, central differences around the world point: a turning part is lit as
    it turns), "canonical" the canonical density's forward differences at the warped point (a
    turning part is lit as at rest), "jacobian" the canonical differences turned by the
    warp's Jacobian (as "world" to first order; 3 more warps without gradients). On the
    oracle priors "world" took lift's Chamfer from 2.74% to 1.13%; on an H100 it costs the
    paper schedule about 2.5 minutes (docs/DECISIONS.md, docs/BENCHMARKS.md)."""

    def __post_init__(self):
        if self.normals not in NORMALS:
            raise ValueError(f"renderer.normals must be one of {', '.join(NORMALS)}, not "
                             f"{self.normals!r}")


@dataclass(frozen=True)
class ReferenceConfig:
    """The reference view's losses and the steps that take only them (Animate124, after
    stable-dreamfusion: `known_view_interval` 4, `known_iters` 100)."""

    rgb: float = 5.0
    """Weight of the masked RGB error."""
    mask: float = 0.5
    """Weight of the silhouette error."""
    depth: float = 0.01
    """Weight of 1 - Pearson correlation with the estimated depth (foreground only)."""
    every: int = 4
    """Every `every`-th step of static, dynamic and refine fits only the reference (0: none)."""
    first: int = 100
    """The static stage's first `first` steps fit only the reference."""


@dataclass(frozen=True)
class LookConfig:
    """How SDS renders look (Animate124's run scripts on stable-dreamfusion's trainer): a
    light near the camera, a drawn ambient, a white material in some steps, a random
    background."""

    ambient_range: tuple[float, float] = (0.1, 1.0)
    """Where the ambient light is drawn."""
    p_textureless: float = 0.2
    """Probability of a white material in the static and dynamic stages."""


@dataclass(frozen=True)
class ViewConfig:
    """Where the SDS stages' cameras are drawn."""

    polar_deg: tuple[float, float] = (45.0, 135.0)
    """Polar angle range, degrees from +Z, of the views not drawn above the object."""
    p_upper_hemisphere: float = 0.5
    """Probability that a view is drawn above the object instead, polar 0-90
    (`uniform_sphere_rate`; cameras.random_view)."""


@dataclass(frozen=True)
class GuidanceSet:
    """Each prior's SDS settings (defaults: priors/sds.py, their one home)."""

    sd: GuidanceConfig = SD
    """Stable Diffusion (static stage)."""
    zero123: GuidanceConfig = ZERO123
    """Zero-1-to-3 (static stage; dynamic and refine stages on clips starting at time 0)."""
    video: GuidanceConfig = VIDEO
    """ModelScope text-to-video (dynamic and refine stages)."""
    tile: GuidanceConfig = TILE
    """ControlNet-tile on Stable Diffusion (refine stage)."""


@dataclass(frozen=True)
class StaticConfig:
    """Reference view + SD SDS + Zero123 SDS on the canonical field."""

    steps: int = 5000
    """Optimisation steps."""
    normal_fraction: float = 0.2
    """The first share of the stage renders normals instead (`normal_iter_ratio`)."""
    coarse_fraction: float = 0.6
    """The first share of the stage sees only the canonical grid's coarse levels
    (`grid_levels_mask_iters` 3000 of `--iters` 5000); 0: off."""
    coarse_levels: float = 0.5
    """The share of the canonical grid's levels open meanwhile (`grid_levels_mask` 8 of 16
    levels masked)."""
    init: str = "blob"
    """Start from the density blob ('blob', Animate124) or the preview proxy ('proxy')."""
    proxy_steps: int = 300
    """Steps fitting the proxy into the field (init 'proxy')."""
    proxy_points: int = 2**16
    """Points per step of that fit (half uniform in the box, half near the proxy's
    surface)."""
    prompt: str = "a high-resolution DSLR image of {}, 8k, good quality"
    """The SD prompt; {} is the object, 'a' and the learned token (Animate124's run scripts
    give the class word there and add ', 8k, good quality'). Its front, side and back views
    are blended by azimuth (`text.direction_weights`)."""

    def __post_init__(self):
        if self.init not in ("blob", "proxy"):
            raise ValueError(f"static.init must be 'blob' or 'proxy', not {self.init!r}")
        if not (0.0 <= self.coarse_fraction < 1.0 and 0.0 < self.coarse_levels <= 1.0):
            raise ValueError("static.coarse_fraction must be in [0, 1), static.coarse_levels "
                             "in (0, 1]")

    def levels_open(self, step: int) -> float:
        """The share of the canonical grid's levels open at `step` of the stage. The coarse
        phase is a share of the schedule, so shorter presets keep its share of their steps;
        rounded down, so the stage's last step (and every later stage) sees all levels."""
        coarse = int(self.coarse_fraction * self.steps)
        return self.coarse_levels if step < coarse else 1.0


@dataclass(frozen=True)
class DynamicConfig:
    """Motion learned with video SDS on clips; Zero123 on clips that start at time 0."""

    steps: int = 10000
    """Optimisation steps."""
    clip_frames: int = 16
    """Frames per clip."""
    time_steps: int = 256
    """The timeline's resolution clips are drawn on."""
    clip_span: tuple[int, int] = (16, 256)
    """Range of a clip's span, in time steps."""
    p_start_at_zero: float = 0.2
    """Probability that a clip starts at time 0."""
    p_mirror: float = 0.5
    """Probability that a clip is mirrored: each time t becomes 1 - t, the clip still
    playing forward (cameras.sample_clip)."""
    mirror: str = "forward"
    """How a mirrored clip plays: "forward" (Animate124's rule above) or "reverse" (its
    frames in reverse order: it plays backwards, teaching a one-way motion both ways; kept
    only so that `bench oracle --ab mirror` can show what the forward rule is worth)."""
    p_moving_camera: float = 0.9
    """Probability that the camera moves while the clip plays (`dynamic_cam_rate`)."""
    sweep_polar_deg: float = 45.0
    """A moving camera's polar angle changes by a draw in +-this over a clip (degrees)."""
    sweep_azimuth_deg: float = 90.0
    """A moving camera's azimuth changes by a draw in +-this over a clip (degrees)."""
    canonical_lr_scale: float = 0.1
    """The canonical field keeps learning, at this fraction of the learning rate (0: it is
    frozen and not in the optimiser: mesh mode, whose canonical field is the mesh)."""
    motion_lr_scale: float = 0.1
    """The motion field learns at this multiple of the learning rate: 1e-3. Animate124's time
    grids learn at 1e-2, but they hold features, not displacements; ours at 1e-2 overshot on
    the oracle priors (docs/DECISIONS.md "The SDS stages' motion")."""
    motion_levels: float = 1.0
    """The share of the motion field's levels open once its coarse-to-fine schedule is done
    (it opens them over the stage's first half): below 1, the finest stay shut, a smoother
    motion with fewer parameters to spread a noisy gradient over."""

    def __post_init__(self):
        if not (self.motion_lr_scale > 0 and 0 < self.motion_levels <= 1):
            raise ValueError("dynamic.motion_lr_scale must be > 0 and dynamic.motion_levels "
                             "in (0, 1]")
        if self.mirror not in ("forward", "reverse"):
            raise ValueError(f"dynamic.mirror must be 'forward' or 'reverse', not "
                             f"{self.mirror!r}")


@dataclass(frozen=True)
class RefineConfig:
    """ControlNet-tile SDS with the learned token (one-step x0 target) beside the dynamic
    stage's video SDS and Zero123, on the dynamic stage's clips (`dynamic.clip_frames`,
    spans, moving cameras): Animate124's `run-cn.sh` (`--guidance SD zero123 CN`, weights
    1, 40, 1) and dnerf/utils.py `train_step`."""

    steps: int = 5000
    """Optimisation steps."""
    tile_frames: int = 2
    """Frames of each clip that ControlNet-tile sees, evenly spaced from the first: {0, 8}
    of 16 (`--cn_frames 2`, `--cn_frame_method even`)."""
    render_size: int = 128
    """Side of the clip's renders (`--h 128 --w 128`, as in the dynamic stage): the video
    prior sees them upsampled to its size (256), ControlNet-tile its frames upsampled to its
    size (1024). The frozen model's conditions are rendered at the same size."""
    video_every: int = 1
    """The video SDS runs on every `video_every`-th prior step, on the whole clip (1: every
    step, as Animate124; 0: never, and the video prior is not loaded). A step without it
    renders only the tile's frames, so a larger value trades the video prior's pull for
    time and GPU memory (the video and Zero123 priors stay loaded beside SD and the
    ControlNet)."""
    p_textureless: float = 0.0
    """Probability of a white material (`--textureless_rate 0`)."""
    small_card_gib: float = 28.0
    """On a GPU whose memory for this process is below this many GiB (a 24 GB card), refine
    shades with `small_card_normals` and replays CUDA graphs only if
    `small_card_cuda_graphs`: under a 23 GiB cap its steps ran out of memory with world
    normals (24.2-24.5 GB at its peak) and with canonical ones beside the graphs' memory
    pools (1 GiB); canonical normals without graphs fit at 23.8-23.9 GB, at the same speed
    (docs/BENCHMARKS.md, "Memory on a 24 GB card"). 0: never."""
    small_card_normals: str = "canonical"
    """Refine's shading normals on such a card (`renderer.normals`' choices)."""
    small_card_cuda_graphs: bool = False
    """Whether refine's priors and reference steps replay CUDA graphs on such a card (False:
    eager, and the graphs the earlier stages captured are freed)."""

    def __post_init__(self):
        if self.video_every < 0 or self.tile_frames < 1:
            raise ValueError("refine.video_every must be >= 0 (0: never) and "
                             "refine.tile_frames >= 1")
        if self.small_card_gib < 0 or self.small_card_normals not in NORMALS:
            raise ValueError(f"refine.small_card_gib must be >= 0 and refine."
                             f"small_card_normals one of {', '.join(NORMALS)}")

    def small_card(self, usable_bytes: int | None) -> bool:
        """Whether a device with this much memory for this process (None: not a GPU) gets
        refine's small-card settings."""
        return usable_bytes is not None and usable_bytes < self.small_card_gib * 2**30


@dataclass(frozen=True)
class RegularisersConfig:
    """Losses on the SDS steps' own renders and on the motion (Animate124's trainers,
    nerf/utils.py and dnerf/utils.py, at main.py's defaults, which its run scripts keep); 0
    turns one off and the renderer then computes nothing for it."""

    entropy: float = 1e-3
    """Binary entropy of each ray sample's weight, mean over the samples: pushes samples to
    empty or opaque (no fog). Ramped in (`entropy_weight`)."""
    orientation: float = 1e-2
    """Mean over the samples of weight (held fixed) x max(n . ray, 0)^2: normals that face
    away from the camera where the light stops (inward normals)."""
    normal_tv: float = 0.5
    """Mean squared difference of neighbouring pixels of the normal image."""
    normal_blur: float = 0.5
    """Mean squared difference between the normal image and its 9-px Gaussian blur."""
    time_smoothness: float = 0.1
    """Dynamic and refine (the static stage has no motion): mean squared change of the
    displacement over one `time_step`, at random points of the box and times."""
    time_step: float = 1 / 63
    """The time interval of `time_smoothness`: one step of Animate124's 64 time grids."""
    time_points: int = 4096
    """Random points per step of `time_smoothness`."""


@dataclass(frozen=True)
class OptimConfig:
    """The field stages' optimiser."""

    lr: float = 1e-2
    """Learning rate of the trained fields' hash grids."""
    grad_clip: float = 1.0
    """Dynamic and refine clip every gradient value at this (`--grad_clip 1`); 0: off."""


@dataclass(frozen=True)
class ExportConfig:
    """The animated mesh extracted at the end."""

    resolution: int = 256
    """Marching-cubes grid per side."""
    faces: int = 50_000
    """Faces the mesh is simplified to."""


@dataclass(frozen=True)
class MeshConfig:
    """Mesh mode on the GPU presets (backend/meshmode/animate.py): the artist's mesh as the
    canonical field, then the dynamic stage with an ARAP term on the mesh's vertices."""

    fit_steps: int = 1000
    """Steps regressing the canonical field onto the mesh's occupancy (field.fit.fit_shape)."""
    fit_points: int = 2**16
    """Points per fitting step (half uniform in the box, half near the surface)."""
    occupancy_resolution: int = 128
    """Cells per side of the winding-number grid the occupancy is read from (trilinear)."""
    edge_cells: float = 2.0
    """Width of the occupancy's edge, in cells of that grid: the field is fitted to
    sigmoid(-signed distance / width), so that the density's gradient, the renders' normals,
    is smooth across the surface (meshmode/canonical.py fit_to_mesh); 0 for the hard inside
    indicator. On lift's rest pose (24 px renders, 64 cells) 2 gives held-out
    textureless renders of 21.2 dB against the truth's, 13.9 dB with 0, 20.2 with 1, 17.2
    with 4."""
    arap: float = 1.0
    """Weight of the as-rigid-as-possible energy of the mesh's vertices carried by the motion
    (Animate3D): per vertex, the squared change of its one-ring edges after the best local
    rotation, over the one-rings' squared rest lengths (dimensionless; a uniform 10 %
    stretch is about 0.01). Not yet tuned against real priors; on the small oracle (bench
    oracle --mesh) 4 scores as 1 per vertex (bend 2.39 / 2.34%, lift 2.85 / 2.94%) with fewer
    vertices the export cannot carry (1 / 45 and 0 / 6), not yet run at full size."""
    fold: float = 1.0
    """Weight of the fold energy at the same carried vertices (meshmode/arap.py
    fold_energy): where the backward warp's Jacobian determinant drops below 1/2, towards a
    fold, where the motion has no inverse and the artist's vertices cannot be carried."""
    arap_vertices: int = 4096
    """One-ring centres drawn per step for the ARAP energy (all when the mesh has fewer)."""
    arap_times: int = 2
    """Random times per step at which the ARAP energy is taken."""
    pin: float = 10.0
    """Weight of the pinned vertices' mean squared displacement (object frame; the request's
    `pin`); without a pin nothing is held."""


@dataclass(frozen=True)
class Animate124Config:
    """The whole Animate124 method."""

    name: str
    """The preset this tree is (recorded in results)."""
    textual_inversion: TextualInversionConfig = _part(TextualInversionConfig)
    """Textual inversion."""
    field: FieldConfig = _part(FieldConfig)
    """Fields and occupancy."""
    renderer: RendererConfig = _part(RendererConfig)
    """Rendering."""
    reference: ReferenceConfig = _part(ReferenceConfig)
    """Reference-view losses."""
    look: LookConfig = _part(LookConfig)
    """Shading and background of SDS renders."""
    views: ViewConfig = _part(ViewConfig)
    """SDS cameras."""
    guidance: GuidanceSet = _part(GuidanceSet)
    """The priors' SDS settings."""
    static: StaticConfig = _part(StaticConfig)
    """The static stage."""
    dynamic: DynamicConfig = _part(DynamicConfig)
    """The dynamic stage."""
    refine: RefineConfig = _part(RefineConfig)
    """The refine stage."""
    regularisers: RegularisersConfig = _part(RegularisersConfig)
    """Regularisers of the SDS steps."""
    optim: OptimConfig = _part(OptimConfig)
    """The field stages' optimiser."""
    export: ExportConfig = _part(ExportConfig)
    """Mesh extraction."""
    mesh: MeshConfig = _part(MeshConfig)
    """Mesh mode (ignored by image jobs)."""
    checkpoint_every: int = 500
    """Steps between checkpoints of the fields."""

    def __post_init__(self):
        if self.reference.every < 0 or self.reference.first < 0:
            raise ValueError("reference.every and reference.first must be >= 0 (0: none)")

    def steps(self, stage: str) -> int:
        return getattr(self, stage).steps

    def clip_value(self, stage: str) -> float | None:
        """The gradient-value clip of a stage, or None."""
        clip = self.optim.grad_clip
        return clip if stage in ("dynamic", "refine") and clip > 0 else None

    def entropy_weight(self, stage: str, progress: float) -> float:
        """The entropy's weight at `progress` (0..1) of an SDS stage: Animate124's
        lambda_entropy * min(1, 2 * global_step / iters), where dynamic and refine go on from
        the global step the stage before reached and `iters` counts every stage so far: in
        over the first half of static, from 2/3 to full within the first quarter of dynamic
        (paper's steps), full throughout refine."""
        field_stages = STAGES[1:]
        before = sum(self.steps(s) for s in field_stages[:field_stages.index(stage)])
        total = before + self.steps(stage)
        ramp = min(1.0, 2 * (before + progress * self.steps(stage)) / total) if total else 1.0
        return self.regularisers.entropy * ramp

    def reference_step(self, stage: str, step: int) -> bool:
        """Whether `step` of an SDS stage fits the reference view instead of the priors."""
        if stage == "static" and step < self.reference.first:
            return True
        return self.reference.every > 0 and step % self.reference.every == 0


PAPER = Animate124Config("paper")
FAST = override(replace(PAPER, name="fast", checkpoint_every=250), {
    "textual_inversion.steps": 500, "textual_inversion.batch": 4, "static.steps": 1500,
    "reference.first": 30, "dynamic.steps": 2500, "refine.steps": 500})
PRESETS = {"paper": PAPER, "fast": FAST}

# The tiny random models' own sizes (16-px priors; `animate4d models make-tiny`).
TINY_SIZES = {
    "textual_inversion.size": 16, "textual_inversion.batch": 2,
    "renderer.size": 12, "renderer.samples": 16,
    "guidance.zero123": replace(ZERO123, size=16),
    "guidance.video": replace(VIDEO, size=16),
    "guidance.tile": replace(TILE, size=16),
    "dynamic.clip_frames": 4, "dynamic.time_steps": 16, "dynamic.clip_span": (4, 16),
    "refine.render_size": 12,
    "field.grid_levels": 4, "field.grid_log2_table": 12, "field.occupancy_resolution": 16,
    "export.resolution": 32, "export.faces": 2000,
    "static.proxy_steps": 100, "static.proxy_points": 2**12, "reference.first": 0,
    "mesh.fit_steps": 150, "mesh.fit_points": 2**12, "mesh.occupancy_resolution": 32,
    "mesh.arap_vertices": 256,
}


def scaled(config: Animate124Config, max_steps: int | None = None,
           changes: dict | None = None) -> Animate124Config:
    """Apply dotted-path `changes`, then cap every stage at max_steps (smoke runs, tests),
    mesh mode's fit of the canonical field included."""
    out = override(config, changes or {})
    if max_steps is not None:
        if max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        static = min(out.static.steps, max_steps)
        out = override(out, {
            "textual_inversion.steps": min(out.textual_inversion.steps, max_steps),
            "static.steps": static,
            # the static stage's reference-only start keeps its share of the stage
            "reference.first": out.reference.first * static // max(out.static.steps, 1),
            "dynamic.steps": min(out.dynamic.steps, max_steps),
            "refine.steps": min(out.refine.steps, max_steps),
            # mesh mode's canonical stage is one step of this many fitting steps
            "mesh.fit_steps": min(out.mesh.fit_steps, max_steps),
        })
        out = replace(out, checkpoint_every=min(out.checkpoint_every, max(1, max_steps // 2)))
    return out


def tiny(config: Animate124Config = FAST, max_steps: int = 2) -> Animate124Config:
    """`config` at the tiny models' sizes, every stage capped at `max_steps` (tests, smoke)."""
    return scaled(override(config, TINY_SIZES), max_steps)
