"""The Animate124 pipeline on the GPU: presets, textual inversion, stages, orchestration."""
