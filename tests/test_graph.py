from dataclasses import dataclass

import pytest

from iapas.errors import ConfigError
from iapas.stages.graph import StageGraph


@dataclass
class Add:
    amount: int
    name: str = "add"
    inputs: tuple = ("x",)
    outputs: tuple = ("x",)

    def run(self, x):
        return {"x": x + self.amount}


@dataclass
class Double:
    name: str = "double"
    inputs: tuple = ("x",)
    outputs: tuple = ("y",)

    def run(self, x):
        return {"y": 2 * x}


def test_runs_in_order_and_times_each_stage():
    graph = StageGraph([Add(3), Double()], provided=("x",))
    run = graph.run({"x": 1})
    assert run.context["y"] == 8
    assert list(run.timings) == ["add", "double"]
    assert all(t >= 0 for t in run.timings.values())


def test_without_and_replaced():
    graph = StageGraph([Add(3), Double()], provided=("x",))
    assert graph.without("add").run({"x": 1}).context["y"] == 2
    assert graph.replaced("add", Add(10)).run({"x": 1}).context["y"] == 22
    assert graph.inserted("double", Add(1, name="late", inputs=("y",), outputs=("y",))).names == ["add", "double", "late"]


def test_missing_input_is_a_config_error():
    with pytest.raises(ConfigError, match="needs \\['y'\\]"):
        StageGraph([Add(1, inputs=("y",))], provided=("x",))
    with pytest.raises(ConfigError, match="no stage named"):
        StageGraph([Add(1)], provided=("x",)).without("nope")
    with pytest.raises(ConfigError, match="unique"):
        StageGraph([Add(1), Add(2)], provided=("x",))


def test_stage_must_return_its_declared_outputs():
    @dataclass
    class Liar:
        name: str = "liar"
        inputs: tuple = ("x",)
        outputs: tuple = ("z",)

        def run(self, x):
            return {"w": x}

    with pytest.raises(RuntimeError, match="declared"):
        StageGraph([Liar()], provided=("x",)).run({"x": 1})
