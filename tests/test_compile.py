"""Training under torch.compile: one batch shape per compiled graph, and the eager result unchanged.

Compiled here with dynamo's ``eager`` backend: dynamo traces, guards and recompiles exactly as with
inductor (a recompilation is dynamo's decision), without spending a minute in a C++ compiler.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo

from helpers import make_params, tiny_train_data
from mstagger.inference.bundle import load_bundle
from mstagger.train import train
from mstagger.training.batches import epoch_batches


def run(tmp_path: Path, name: str, data, **overrides) -> Path:
    base = {"epochs": 2, "batch_size": 8, "precision": "fp32", "device": "cpu", "bn_recalibration_clips": 16}
    params = make_params(**{**base, **overrides})
    out = tmp_path / name
    train(data, params, out / "model.pt", out / "log", out / "ckpt" / "checkpoint.pt", "test-rev")
    return out


@pytest.fixture
def eager_backend(monkeypatch):
    """torch.compile as the stage calls it, on dynamo's eager backend; dynamo's caches emptied."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: real(model, backend="eager"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def test_the_last_partial_batch_compiles_no_second_graph_and_changes_nothing(tmp_path, eager_backend):
    data = tiny_train_data(n=46)  # 30 train clips: batches of 8, 8, 8 and a partial 6
    assert [len(b) for b in epoch_batches(data.rows("train"), 8, 1337, 1)] == [8, 8, 8, 6]
    with torch._dynamo.config.patch(error_on_recompile=True):  # a second shape raises RecompileError
        compiled = run(tmp_path, "compiled", data, compile="default")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did run compiled
    eager = run(tmp_path, "eager", data, compile="none")
    wa = load_bundle(compiled / "model.pt").model.state_dict()
    wb = load_bundle(eager / "model.pt").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the same clips per step, the same numbers
    assert (compiled / "log/metrics.json").read_text() == (eager / "log/metrics.json").read_text()


def test_steps_of_full_batches_go_through_the_compiled_model_and_others_run_eagerly():
    from mstagger.training.epoch import OneShape

    calls = []
    eager = torch.nn.Linear(3, 2)
    compiled = lambda x: calls.append(len(x)) or eager(x)  # noqa: E731
    steps = OneShape(eager, compiled, batch=4)
    out = steps(torch.ones(4, 3)), steps(torch.ones(3, 3))
    assert calls == [4] and [len(o) for o in out] == [4, 3]
    assert steps.train(False) is steps and not eager.training
    np.testing.assert_array_equal(out[1].detach().numpy(), eager(torch.ones(3, 3)).detach().numpy())
