"""A job's torch threads: one for a small training step, the worker's for a large one."""

import torch

from core.spec import JobSpec
from core.train import Trainer
from descent.settings import Settings
from worker.threads import job_threads, step_flops, threads_for

BELOW = Settings().single_thread_below_flops  # the default, 4 MFLOP


def trainer(model: dict, batch_size: int = 64) -> Trainer:
    spec = {
        "dataset": {"name": "digits", "val_fraction": 0.2, "seed": 0},
        "model": model,
        "optimizer": {"name": "sgd", "lr": 0.01},
        "training": {"epochs": 1, "batch_size": batch_size, "seed": 0, "device": "cpu"},
    }
    return Trainer(JobSpec.model_validate(spec)).setup()


def test_a_steps_operations_are_three_forward_passes_of_the_batch() -> None:
    # digits: 64 inputs, 10 classes; a linear layer's forward is 2 * inputs * outputs a sample.
    t = trainer({"arch": "mlp", "hidden": [128]}, batch_size=32)
    forward = 2 * (64 * 128 + 128 * 10)
    assert t.step_flops() == 3 * forward * 32


def test_counting_changes_neither_the_model_nor_the_random_stream() -> None:
    # Batch norm (its running statistics, its count of batches) and dropout (the stream).
    t = trainer({"arch": "mlp", "hidden": [32], "dropout": 0.5, "norm": "batch"})
    t.model.train()
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    expected = torch.random.get_rng_state()
    t.step_flops()
    assert t.model.training and all(m.training for m in t.model.modules())
    assert torch.equal(torch.random.get_rng_state(), expected)
    assert all(torch.equal(v, before[k]) for k, v in t.model.state_dict().items())


def test_a_small_step_trains_on_one_thread_and_the_workers_threads_come_back() -> None:
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        small = trainer({"arch": "mlp", "hidden": [64]})
        assert small.step_flops() < BELOW
        with job_threads(small, BELOW) as threads:
            assert threads == 1 == torch.get_num_threads()
        assert torch.get_num_threads() == 2

        large = trainer({"arch": "mlp", "hidden": [1024, 1024]})
        assert large.step_flops() > BELOW
        assert threads_for(large, BELOW) == 2
        with job_threads(large, BELOW):
            assert torch.get_num_threads() == 2

        # A model this large is not even counted: its parameters say enough.
        counted: list[float] = []
        large.step_flops = lambda: counted.append(1.0) or 1.0  # type: ignore[method-assign]
        assert threads_for(large, BELOW) == 2 and counted == []
        assert threads_for(small, BELOW) == 1  # a small one is

        # DESCENT_SINGLE_THREAD_BELOW_FLOPS=0: the worker's threads for every job.
        assert threads_for(small, 0) == 2
    finally:
        torch.set_num_threads(saved)


def test_a_models_count_is_made_once_per_structure_input_and_batch() -> None:
    first = trainer({"arch": "mlp", "hidden": [48]})
    expected = first.step_flops()
    assert step_flops(first) == expected
    again = trainer({"arch": "mlp", "hidden": [48]})
    wider = trainer({"arch": "mlp", "hidden": [49]})
    other_batch = trainer({"arch": "mlp", "hidden": [48]}, batch_size=8)
    made: list[int] = []
    for t in (again, wider, other_batch):
        t.step_flops = lambda t=t: made.append(1) or Trainer.step_flops(t)  # type: ignore[method-assign]
    assert step_flops(again) == expected and made == []  # the same model: remembered
    assert step_flops(wider) == 3 * 2 * (64 * 49 + 49 * 10) * 64 and made == [1]
    assert step_flops(other_batch) == expected / 8 and made == [1, 1]
