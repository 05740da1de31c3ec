"""The `paper` preset is Animate124's published schedule (docs/ARCHITECTURE.md); `fast` keeps
every stage with fewer steps. `scaled` shrinks a preset for smoke runs and CPU tests."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Preset:
    name: str
    # textual inversion
    ti_steps: int = 3000
    ti_size: int = 512
    ti_batch: int = 16
    ti_lr: float = 1e-4
    ti_views: int = 512  # augmented views encoded once, then drawn from (textual_inversion.py)
    # static: reference view + SD SDS + Zero123 SDS
    static_steps: int = 5000
    render_size: int = 128
    ref_rgb: float = 5.0
    ref_mask: float = 0.5
    ref_depth: float = 0.01
    sd_scale: float = 100.0
    sd_t: tuple[float, float] = (0.2, 0.6)
    zero123_scale: float = 5.0
    zero123_weight: float = 40.0
    zero123_t: tuple[float, float] = (0.2, 0.6)
    polar_deg: tuple[float, float] = (45.0, 135.0)
    lr: float = 1e-2
    # Animate124 (after stable-dreamfusion) fits the reference view on its own steps: every
    # `ref_every`-th step of static, dynamic and refine, and the static stage's first
    # `ref_first` steps, render only the reference view and take only its losses; the other
    # steps take only the priors' (`known_view_interval` 4, `known_iters` 100).
    ref_every: int = 4
    ref_first: int = 100
    # How SDS renders look (Animate124's run scripts on stable-dreamfusion's trainer): a light
    # near the camera, ambient drawn in `ambient_range`, a white material with p_textureless
    # (0 in refinement), a random background colour; the static stage's first
    # `static_normal_fraction` renders normals instead (`normal_iter_ratio` 0.2).
    ambient_range: tuple[float, float] = (0.1, 1.0)
    p_textureless: float = 0.2
    refine_p_textureless: float = 0.0
    static_normal_fraction: float = 0.2
    # dynamic: video SDS on clips; Zero123 on the clip's first frame when it is time 0
    dynamic_steps: int = 10000
    clip_frames: int = 16
    video_size: int = 256
    video_scale: float = 100.0
    video_t: tuple[float, float] = (0.02, 0.98)
    time_steps: int = 256
    clip_span: tuple[int, int] = (16, 256)
    p_start_at_zero: float = 0.2
    p_mirror: float = 0.5
    p_moving_camera: float = 0.9
    canonical_lr_scale: float = 0.1  # the canonical field keeps learning, slowly
    # The dynamic and refine stages clip every gradient value at this (Animate124's
    # run-dynamic.sh / run-cn.sh: --grad_clip 1); 0 turns it off.
    grad_clip: float = 1.0
    # refine: ControlNet-tile SDS with the learned token, one-step x0 target
    refine_steps: int = 5000
    refine_frames: int = 2
    refine_render_size: int = 256  # rendered, then upsampled to the ControlNet's 1024
    tile_size: int = 1024
    tile_scale: float = 7.5
    tile_t: tuple[float, float] = (0.2, 0.8)
    # field and export
    samples: int = 64
    occupancy_resolution: int = 64
    grid_levels: int = 16
    grid_log2_table: int = 19
    export_resolution: int = 256
    export_faces: int = 50_000
    checkpoint_every: int = 500
    # The static stage starts from the density blob ("blob", Animate124) or from the preview
    # proxy fitted into the field ("proxy": the inflated silhouette coloured from the image).
    static_init: str = "blob"
    proxy_steps: int = 300
    # Priors' own resolutions (None: the VAE's sample size: 512 for SD, 256 for Zero123)
    sd_size: int | None = None
    zero123_size: int | None = None

    def __post_init__(self):
        if self.static_init not in ("blob", "proxy"):
            raise ValueError(f"static_init must be 'blob' or 'proxy', not {self.static_init!r}")
        if self.ref_every < 0 or self.ref_first < 0:
            raise ValueError("ref_every and ref_first must be >= 0 (0: no such steps)")

    def steps(self, stage: str) -> int:
        return {"textual_inversion": self.ti_steps, "static": self.static_steps,
                "dynamic": self.dynamic_steps, "refine": self.refine_steps}[stage]

    def clip_value(self, stage: str) -> float | None:
        """The gradient-value clip of a stage, or None."""
        return self.grad_clip if stage in ("dynamic", "refine") and self.grad_clip > 0 else None

    def reference_step(self, stage: str, step: int) -> bool:
        """Whether `step` of an SDS stage fits the reference view instead of the priors."""
        if stage == "static" and step < self.ref_first:
            return True
        return self.ref_every > 0 and step % self.ref_every == 0


PAPER = Preset("paper")
FAST = replace(PAPER, name="fast", ti_steps=500, ti_batch=4, static_steps=1500, ref_first=30,
               dynamic_steps=2500, refine_steps=500, checkpoint_every=250)
PRESETS = {"paper": PAPER, "fast": FAST}

STAGES = ("textual_inversion", "static", "dynamic", "refine")


def scaled(preset: Preset, max_steps: int | None = None, **sizes) -> Preset:
    """Cap every stage at max_steps and override sizes (smoke runs, CPU tests)."""
    out = replace(preset, **sizes)
    if max_steps is not None:
        if max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        static = min(out.static_steps, max_steps)
        out = replace(out, ti_steps=min(out.ti_steps, max_steps), static_steps=static,
                      # the static stage's reference-only start keeps its share of the stage
                      ref_first=out.ref_first * static // max(out.static_steps, 1),
                      dynamic_steps=min(out.dynamic_steps, max_steps),
                      refine_steps=min(out.refine_steps, max_steps),
                      checkpoint_every=min(out.checkpoint_every, max(1, max_steps // 2)))
    return out


# A preset at tiny sizes, for tests and the tiny models (16-px priors).
def tiny(preset: Preset = FAST, max_steps: int = 2) -> Preset:
    return scaled(preset, max_steps, ti_size=16, ti_batch=2, render_size=12, video_size=16,
                  clip_frames=4, refine_render_size=12, tile_size=16, samples=16, grid_levels=4,
                  occupancy_resolution=16,
                  grid_log2_table=12, export_resolution=32, export_faces=2000, time_steps=16,
                  clip_span=(4, 16), proxy_steps=100, ref_first=0)
