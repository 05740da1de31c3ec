"""The synthetic 4D benchmark: animated meshes with known motion, rendered by Blender,
fitted by the field, scored against the truth (run by `python -m benchmarks synthetic`)."""
