"""GGUF language models through llama.cpp (the `xllamacpp` wheel), in process and without dequantising.

transformers dequantises a GGUF file on load (SmolLM2-135M: 20-28 s here; a Q4 LLaMA-3-8B would need
tens of GB); llama.cpp runs the quantised weights directly. `xllamacpp.Server` exposes llama.cpp's
OpenAI-style chat endpoint as a Python call, so the request and answer are the same JSON as the HTTP
backend's, and the chat template stored in the GGUF file is applied by llama.cpp itself.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import IapasError, WeightsError

if TYPE_CHECKING:
    from .llm import LLMSpec

CONTEXT_TOKENS = 2048  # the IAP prompt and a 512-token answer fit with room to spare


def default_threads() -> int:
    """llama.cpp threads: the cores this process may use (spinning threads on busy cores slow it down badly)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class LlamaCppChat:
    """One GGUF model loaded once; `chat(messages, ...)` returns the assistant's text and whether it hit the limit."""

    def __init__(self, path: Path, threads: int = 0, gpu_layers: int = 0) -> None:
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"LLM not found: {path} (a .gguf file)")
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise WeightsError(f"not a GGUF file: {path}")
        try:
            import xllamacpp
        except ImportError:
            raise WeightsError("GGUF models run through llama.cpp: pip install xllamacpp") from None
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = CONTEXT_TOKENS
        params.cpuparams.n_threads = threads or default_threads()
        params.cpuparams_batch.n_threads = threads or default_threads()
        params.n_gpu_layers = gpu_layers
        params.verbosity = -1  # llama.cpp logs every token's timing to stderr otherwise
        params.warmup = False
        try:
            self.server = xllamacpp.Server(params)
        except Exception as error:  # llama.cpp reports a bad file as a generic runtime error
            raise WeightsError(f"llama.cpp cannot load {path}: {str(error).splitlines()[0][:160]}") from None
        self.path = path

    def chat(self, messages: list[dict[str, str]], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 111) -> tuple[str, bool]:
        """The answer to a chat and whether it stopped at `max_tokens`; greedy when temperature is 0."""
        request: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                                   "top_p": top_p, "seed": seed}
        reply = self.server.handle_chat_completions(request)
        if not isinstance(reply, dict) or "choices" not in reply:
            detail = reply.get("error", {}).get("message", reply) if isinstance(reply, dict) else reply
            raise IapasError(f"llama.cpp could not answer with {self.path.name}: {str(detail)[:160]}")
        choice = reply["choices"][0]
        return str(choice["message"]["content"]).strip(), choice.get("finish_reason") == "length"


class LlamaCppLLM:
    """The `gguf` LLM backend: step 1-3's prompt through llama.cpp, greedy or sampled as the recipe says."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        from ..weights.manifest import file_identity

        self.runner = LlamaCppChat(path, threads)
        self.model_id = f"llama.cpp:{Path(path).name}"
        self.identity = f"llama.cpp:{file_identity(Path(path))}"  # the file itself, not its base name, keys the cache

    def generate(self, prompt, tags, options=None) -> str:
        """The answer, its half-written last item dropped when it stopped at the token limit."""
        from ..methods.iapas.prompting import drop_unfinished_item
        from .llm import GREEDY, as_messages

        options = options or GREEDY
        text, cut = self.runner.chat(as_messages(prompt), options.max_new_tokens, options.temperature, options.top_p,
                                     options.seed)
        return drop_unfinished_item(text) if cut else text


def load_gguf(spec: "LLMSpec") -> "LlamaCppLLM":
    """A .gguf file (or a folder holding one, or the packaged `smollm2`) as an LLM: the `gguf` entry of llm.LLMS."""
    from .llm import _require_model, packaged_smollm2

    path = packaged_smollm2() if spec.model == "smollm2" else _require_model(spec)
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if not found:
            raise WeightsError(f"no .gguf file in {path}")
        path = found[0]
    return LlamaCppLLM(path)
