"""Choosing the torch device: GPU when there is one, CPU otherwise."""
from __future__ import annotations

import threading
import weakref
from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch

from .errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """Turn "auto" | "cpu" | "cuda" | "cuda:N" into a usable torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r} (choose one of {', '.join(DEVICE_CHOICES)})")


class _ModelLocks:
    """One re-entrant lock per live model object, forgotten with the model (kept outside it: a lock cannot be pickled
    or deep-copied, and models are both, by Ray and by quantisation). Keyed by id: a dataclass method is unhashable."""

    def __init__(self) -> None:
        self._locks: dict[int, threading.RLock] = {}
        self._guard = threading.Lock()

    def of(self, model: object) -> threading.RLock:
        with self._guard:
            lock = self._locks.get(id(model))
            if lock is None:
                lock = self._locks[id(model)] = threading.RLock()
                try:  # the id may be reused once the model is gone: drop its lock then
                    weakref.finalize(model, self._forget, id(model))
                except TypeError:  # not weak-referenceable: its lock stays (a few bytes)
                    pass
            return lock

    def _forget(self, key: int) -> None:
        with self._guard:
            self._locks.pop(key, None)


_MODEL_LOCKS = _ModelLocks()  # process-wide on purpose: threads sharing a model must find the same lock


@contextmanager
def models_in_turn(*models: object) -> Iterator[None]:
    """Use `models` with no other thread inside any of them; other work of the caller goes on in parallel.

    The backends shadow a module's `forward` for the length of one call (Grounding DINO's reused vision
    features, SAM's batched encoder), so two threads inside one model at once would restore each other's
    forward; torch already spreads one forward over every core, so waiting costs little. Locks are taken
    in a fixed order (by id) so two callers naming the same models never deadlock.
    """
    with ExitStack() as stack:
        for model in sorted({id(m): m for m in models if m is not None}.values(), key=id):
            stack.enter_context(_MODEL_LOCKS.of(model))
        yield
