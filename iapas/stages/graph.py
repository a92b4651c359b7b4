"""The stage protocol and the runner that executes stages over a shared context."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from ..errors import ConfigError


@runtime_checkable
class Stage(Protocol):
    """A step of the pipeline: reads the context keys `inputs`, returns the keys `outputs`.

    `run` takes the inputs as keyword arguments and returns a dict holding exactly `outputs`.
    A stage may overwrite a key an earlier stage wrote (filters rewrite "boxes"), which is
    what lets a user remove a stage and have the next one read the earlier value.
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def run(self, **inputs: Any) -> dict[str, Any]: ...


@dataclass(frozen=True)
class GraphRun:
    """What one run produced: the final context and seconds per stage, in run order."""

    context: dict[str, Any]
    timings: dict[str, float]


class StageGraph:
    """An ordered list of stages with checks that every input is produced before it is read."""

    def __init__(self, stages: Iterable[Stage], provided: Iterable[str] = ()) -> None:
        self.stages: list[Stage] = list(stages)
        self.provided = tuple(provided)
        self._check()

    def _check(self) -> None:
        for index, stage in enumerate(self.stages):
            if not isinstance(stage, Stage):  # runtime_checkable: the attributes and `run` are there
                raise ConfigError(f"stage #{index} is a {type(stage).__name__}, not a Stage: it needs name, inputs, "
                                  "outputs and run(**inputs) -> dict")
        names = [stage.name for stage in self.stages]
        if len(names) != len(set(names)):
            raise ConfigError(f"stage names must be unique: {names}")
        available = set(self.provided)
        for stage in self.stages:
            missing = [key for key in stage.inputs if key not in available]
            if missing:
                raise ConfigError(f"stage {stage.name!r} needs {missing} that no earlier stage provides")
            available.update(stage.outputs)

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ConfigError(f"no stage named {name!r} (stages: {', '.join(self.names)})") from None

    def without(self, *names: str) -> "StageGraph":
        """A new graph with the named stages removed (the paper's ablations)."""
        for name in names:
            self.index(name)
        return StageGraph([s for s in self.stages if s.name not in names], self.provided)

    def replaced(self, name: str, stage: Stage) -> "StageGraph":
        """A new graph with the stage called `name` swapped for `stage`."""
        stages = list(self.stages)
        stages[self.index(name)] = stage
        return StageGraph(stages, self.provided)

    def inserted(self, after: str | None, stage: Stage) -> "StageGraph":
        """A new graph with `stage` placed after the stage `after` (first when None)."""
        stages = list(self.stages)
        stages.insert(0 if after is None else self.index(after) + 1, stage)
        return StageGraph(stages, self.provided)

    def run(self, context: Mapping[str, Any]) -> GraphRun:
        """Execute every stage in order, timing each one."""
        state = dict(context)
        missing = [key for key in self.provided if key not in state]
        if missing:
            raise ConfigError(f"graph run is missing inputs {missing}")
        timings: dict[str, float] = {}
        for stage in self.stages:
            start = time.perf_counter()
            produced = stage.run(**{key: state[key] for key in stage.inputs})
            timings[stage.name] = time.perf_counter() - start
            _check_outputs(stage, produced)
            state.update(produced)
        return GraphRun(state, timings)

    def run_batch(self, contexts: Sequence[Mapping[str, Any]]) -> list[GraphRun | Exception]:
        """`run` on several contexts at once: a stage with `run_batch` gets them together, the others one by one.

        Each entry is what `run` on that context gives, or the exception it raised: one context's
        failure never ends the others. When a batched stage raises, its contexts are run through its
        one-by-one `run` instead, so the failure lands on the context that caused it. A batched
        stage's seconds are shared equally among the contexts it ran together.
        """
        states: list[dict[str, Any] | Exception] = []
        for context in contexts:
            missing = [key for key in self.provided if key not in context]
            states.append(ConfigError(f"graph run is missing inputs {missing}") if missing else dict(context))
        timings: list[dict[str, float]] = [{} for _ in contexts]
        for stage in self.stages:
            alive = [index for index, state in enumerate(states) if not isinstance(state, Exception)]
            batched = getattr(stage, "run_batch", None)
            produced: list[dict[str, Any] | Exception] | None = None
            if batched is not None and len(alive) > 1:
                start = time.perf_counter()
                try:
                    produced = list(batched([{key: states[i][key] for key in stage.inputs} for i in alive]))
                    if len(produced) != len(alive):
                        raise RuntimeError(f"stage {stage.name!r} returned {len(produced)} results for {len(alive)} inputs")
                    for output in produced:
                        _check_outputs(stage, output)
                except Exception:  # noqa: BLE001 - retried one by one below, where the failure gets its own context
                    produced = None
                share = (time.perf_counter() - start) / len(alive)
            if produced is not None:
                for index, output in zip(alive, produced):
                    timings[index][stage.name] = share
                    states[index].update(output)
                continue
            for index in alive:
                start = time.perf_counter()
                try:
                    output = stage.run(**{key: states[index][key] for key in stage.inputs})
                    _check_outputs(stage, output)
                except Exception as error:  # noqa: BLE001 - this context's failure, handed back in its place
                    states[index] = error
                    continue
                timings[index][stage.name] = time.perf_counter() - start
                states[index].update(output)
        return [state if isinstance(state, Exception) else GraphRun(state, timing)
                for state, timing in zip(states, timings)]


def _check_outputs(stage: Stage, produced: Mapping[str, Any]) -> None:
    """A stage must return exactly the keys it declares."""
    if set(produced) != set(stage.outputs):
        raise RuntimeError(f"stage {stage.name!r} returned {sorted(produced)}, declared {list(stage.outputs)}")
