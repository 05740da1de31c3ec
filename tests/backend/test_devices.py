"""`--device` mistakes are the user's, said plainly (not torch's assertion as a bug)."""

import pytest
import torch

from animate4d.backend.devices import choose_device
from animate4d.protocol.errors import Animate4DError


def test_auto_and_cpu():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert choose_device(None).type == want == choose_device("auto").type
    assert choose_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name, said", [("banana", "not a device name"),
                                        ("mps", "cuda or cpu only")])
def test_names_that_are_not_ours(name, said):
    with pytest.raises(Animate4DError, match=said):
        choose_device(name)


def test_cuda_must_exist():
    if torch.cuda.is_available():
        with pytest.raises(Animate4DError, match="CUDA device"):
            choose_device(f"cuda:{torch.cuda.device_count()}")
        assert choose_device("cuda:0").type == "cuda"
    else:
        for name in ("cuda", "cuda:1"):
            with pytest.raises(Animate4DError, match="has no CUDA device") as e:
                choose_device(name)
            assert "--device cpu" in e.value.hint
