"""The 4D neural field: encoders (hash grids), fields, renderer, fitting and mesh extraction."""


def use_tensor_cores(device) -> None:
    """Let float32 matmuls, i.e. the fields' small MLPs (the priors run in fp16), use TF32
    tensor cores on CUDA. Process-wide, so it is called where a job or a benchmark starts."""
    import torch

    if torch.device(device).type == "cuda":
        torch.set_float32_matmul_precision("high")
