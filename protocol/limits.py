"""Every size and count that comes from outside has a limit, and they all live here.

The server, the backend and the Blender extension import these so that one number is checked
everywhere. Raising a limit is a protocol change: note it in protocol/README.md.
"""

from __future__ import annotations

# Meshes (AnimatedMesh and .a4d files)
MAX_VERTICES = 1_000_000
MAX_FACES = 2_000_000
MAX_FRAMES = 1_000
# frames x vertices: 50M vertex positions = 600 MB of float32.
MAX_FRAME_VERTICES = 50_000_000
MAX_FPS = 240.0
MAX_METADATA_BYTES = 64 * 1024
MAX_A4D_BYTES = 1024 * 1024 * 1024
MAX_MESH_FILE_BYTES = 1024 * 1024 * 1024  # mesh mode's input file (.glb with its textures)

# Images
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGE_FILE_BYTES = 64 * 1024 * 1024
MIN_IMAGE_SIDE = 16

# Requests
MAX_PROMPT_CHARS = 1_000
MAX_CAMERA_JSON_BYTES = 64 * 1024

# Wire (see protocol/README.md, "Messages")
MAX_MESSAGE_BYTES = 72 * 1024 * 1024  # a submit carries the image (<= MAX_IMAGE_FILE_BYTES)
CHUNK_BYTES = 4 * 1024 * 1024  # results and checkpoints travel in chunks of this size
MAX_CHECKPOINT_BYTES = 256 * 1024 * 1024
MAX_CHECKPOINTS_PER_JOB = 256
MAX_ACTIVE_JOBS_PER_CLIENT = 32  # queued + running
MAX_JOBS_LISTED = 500
MAX_ID_CHARS = 64
MAX_NAME_CHARS = 256
MAX_PREVIEW_BYTES = 2 * 1024 * 1024
MAX_MESH_VIEWS = 16

# Motion edits and pokes (protocol/spectrum.py, protocol/dynamics.py)
MAX_MOTION_TERMS = 16  # Fourier terms per vertex (Generative Image Dynamics keeps 16)
MAX_EDIT_AMPLITUDE = 10.0
MIN_EDIT_SPEED = 0.05
MAX_EDIT_SPEED = 20.0
MAX_POKES = 64
MAX_POKE_FORCE = 1e4  # object units: about the peak displacement a poke may cause
MAX_DAMPING = 0.99  # damping ratio; 1 and above would not oscillate
MAX_EDITS_RECORDED = 100  # metadata["edits"] keeps the latest this many
