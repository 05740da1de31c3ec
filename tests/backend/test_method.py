"""The runner every method shares (`jobs/method.py`): a GPU that runs out of memory is said
for people, naming the stage and the step, with the checkpoints written before it kept."""

import pytest
import torch

from animate4d.backend.jobs.checkpoints import MemoryCheckpoints
from animate4d.backend.jobs.method import Method, Stage, run_method
from animate4d.protocol.errors import OutOfGpuMemoryError


class _Counting(Stage):
    def __init__(self, name, steps, fail_at=None, error=None):
        self.name, self.steps, self.checkpoint_every = name, steps, 2
        self.fail_at, self.error = fail_at, error
        self.ran, self.released = [], False

    def step(self, step):
        if step == self.fail_at:
            raise self.error
        self.ran.append(step)

    def release(self):
        self.released = True


class _Method(Method):
    def __init__(self, stages):
        self._stages = stages

    @property
    def stages(self):
        return self._stages

    def resume(self, checkpoints):
        return None, 0

    def checkpoint(self, stage, step):
        return {f"{stage}": str(step).encode()}

    def result(self, timings):
        raise AssertionError("a failed job has no result")


def test_running_out_of_gpu_memory_names_the_stage_and_keeps_the_checkpoints():
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 36.00 MiB.\nmore")
    first, second = _Counting("static", 2), _Counting("refine", 5, fail_at=3, error=oom)
    checkpoints = MemoryCheckpoints()
    with pytest.raises(OutOfGpuMemoryError) as raised:
        run_method(_Method([first, second]), checkpoints=checkpoints)
    err = raised.value
    assert err.code == "gpu_memory" and err.__cause__ is oom
    assert "in the refine stage at step 3 of 5" in err.message
    assert "Tried to allocate 36.00 MiB" in err.message and "more" not in err.message
    assert "checkpoints are kept" in err.message and "more memory" in err.hint
    assert checkpoints.get("static") == b"2" and checkpoints.get("refine") == b"2"
    assert second.ran == [0, 1, 2] and second.released


def test_other_errors_pass_through_unchanged():
    boom = RuntimeError("not a memory problem")
    stage = _Counting("dynamic", 3, fail_at=1, error=boom)
    with pytest.raises(RuntimeError) as raised:
        run_method(_Method([stage]))
    assert raised.value is boom and stage.released


def test_running_out_in_a_stages_set_up_says_so():
    class FailsToSetUp(_Counting):
        def setup(self, start):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")

    stage = FailsToSetUp("refine", 5)
    with pytest.raises(OutOfGpuMemoryError, match="refine stage while setting it up"):
        run_method(_Method([stage]))
    assert stage.ran == [] and stage.released


def test_running_out_while_loading_the_checkpoints_says_so():
    class Resuming(_Method):
        def resume(self, checkpoints):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB.")

    with pytest.raises(OutOfGpuMemoryError, match="while loading the job's checkpoints"):
        run_method(Resuming([_Counting("static", 2)]))
