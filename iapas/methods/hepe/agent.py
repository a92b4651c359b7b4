"""HEPE's multi-stage prompt generation agent (paper §3.2 "Text Prompt", Fig. 2): MLLM differences, then LLM refinement.

Step one shows a multimodal LLM a normal image and the test image and asks how they differ; step two
gives a text LLM that description with the category label and the anti-false-alarm constraint (normal
variation such as orientation is not a defect) and keeps the defect phrases. The paper runs Qwen2-VL-72B
(step one) and Qwen2.5-7B (step two) (§5.1 "Implementation Details").

Every answer goes through `iapas.backends.llm.CachedLLM`, keyed by the sha256 of the whole request (the
images travel inside it as base64 PNGs, the prompt text, the model's identity and the generation
options), so a repeated run asks nothing. Prompts are the versioned files `resources/prompts/hepe_*_v1.txt`.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ...backends.llm import CachedLLM, GenerationOptions, LLMSpec, LLMS, OpenAICompatibleLLM, as_messages
from ...config import CLIP_RULE_CHOICES
from ...errors import ConfigError
from ..iapas.prompting import NUMBERING, load_template

if TYPE_CHECKING:
    from ...config import Config

PROMPT_VERSION = "v1"
MAX_PHRASES = 5  # hepe_refine_v1.txt asks for at most 5 phrases; a longer answer is cut there
MLLM_IMAGE_SIDE = 672  # our choice: images are sent with the longest side at most this (bounds the MLLM's image tokens)
# deterministic: greedy decoding (temperature 0) under a fixed seed; a description needs more tokens than a word list
AGENT_OPTIONS = GenerationOptions(temperature=0.0, max_new_tokens=256)
STEP_TWO_BACKENDS = CLIP_RULE_CHOICES["hepe_step_two"]  # mllm: the step-one model answers step two as well


@dataclass(frozen=True)
class AgentSettings:
    """Which prompts the agent sends: the paper's full agent, or one of Table 3's ablations."""

    anti_false_alarm: bool = True  # Table 3 "Anti-false Alarm Constraint"
    normal_image: bool = True  # Table 3 "Normal Image": step one sees the normal image beside the test image
    version: str = PROMPT_VERSION

    def prompt_names(self) -> tuple[str, str]:
        """The step-one and step-two prompt files (without .txt) these settings use."""
        first = "hepe_describe" if self.normal_image else "hepe_describe_single"
        second = "hepe_refine" if self.anti_false_alarm else "hepe_refine_plain"
        return f"{first}_{self.version}", f"{second}_{self.version}"


def image_part(image: np.ndarray, side: int = MLLM_IMAGE_SIDE) -> dict:
    """One OpenAI chat content part carrying a uint8 RGB image as a base64 PNG data URL, shrunk to `side` px at most."""
    from PIL import Image

    picture = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if max(picture.size) > side:
        scale = side / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}}


def decoded_image(part: dict):
    """The PIL image of an `image_part` (for local VLMs, which take the same messages as an endpoint)."""
    from PIL import Image

    data = part["image_url"]["url"].split(",", 1)[1]
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def phrases(answer: str, limit: int = MAX_PHRASES) -> tuple[str, ...]:
    """The defect phrases of a step-two answer: one per line, list marks dropped, "none" meaning none."""
    found = []
    for line in answer.splitlines():
        line = NUMBERING.sub("", line).strip().strip(".;,").strip()
        if line and line.lower().rstrip(".") not in {"none", "no defect", "no defects", "no anomaly", "no anomalies"}:
            found.append(line)
    return tuple(found[:limit])


@dataclass(frozen=True)
class Description:
    """One test image's (or category's) text prompt: step one's raw answer and step two's defect phrases."""

    differences: str
    phrases: tuple[str, ...]


class PromptAgent:
    """Two steps over cached models: `describe(test, normal, category)` -> Description."""

    def __init__(self, mllm: CachedLLM, llm: CachedLLM, settings: AgentSettings = AgentSettings(),
                 options: GenerationOptions = AGENT_OPTIONS) -> None:
        self.mllm, self.llm, self.settings, self.options = mllm, llm, settings, options
        first, second = settings.prompt_names()
        self.first, self.second = load_template(first), load_template(second)

    def step_one_messages(self, test: np.ndarray, normal: np.ndarray | None) -> list[dict]:
        """The step-one request: the normal image (unless ablated), the test image, the question."""
        images = ([normal] if self.settings.normal_image and normal is not None else []) + [test]
        return [{"role": "user", "content": [*(image_part(image) for image in images),
                                             {"type": "text", "text": self.first.text.strip()}]}]

    def step_two_prompt(self, differences: str, category: str) -> str:
        name = category.replace("_", " ").replace("-", " ")
        return self.second.text.replace("{category}", name).replace("{description}", differences.strip())

    def describe(self, test: np.ndarray, normal: np.ndarray | None, category: str) -> Description:
        if self.settings.normal_image and normal is None:
            raise ConfigError("HEPE's agent needs a normal image beside the test image: give --reference-images DIR "
                              "(or ablate normal-image)")
        differences = self.mllm.generate(self.step_one_messages(test, normal), [category], self.options)
        refined = self.llm.generate(self.step_two_prompt(differences, category), [category], self.options) if differences else ""
        return Description(differences, phrases(refined))

    def record(self) -> dict:
        """What the descriptions depend on, for the run's records: models and prompt files (name and sha256)."""
        return {"mllm": self.mllm.model_id, "llm": self.llm.model_id,
                "prompts": {template.name: template.sha256 for template in (self.first, self.second)}}


class TransformersVLM:
    """A local image-text-to-text model directory (Qwen2-VL, Qwen2.5-VL, SmolVLM, ...) answering OpenAI-style messages."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from ...backends.base import load_error, quiet_loading
        from ...weights.manifest import file_identity

        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"--mllm-model {path}: not a transformers model directory (or give --mllm-url for an endpoint)")
        try:
            with quiet_loading():
                self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
                self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
        except Exception as error:  # transformers, safetensors and torch each raise their own types
            raise load_error("MLLM", path, error) from None
        self.model.to(device).eval()
        self.device = device
        self.model_id = f"transformers-vlm:{path.name}"
        self.identity = f"transformers-vlm:{file_identity(path)}"

    def generate(self, prompt, tags: Sequence[str], options: GenerationOptions = AGENT_OPTIONS) -> str:
        import torch

        messages = []
        for message in as_messages(prompt):
            content = message["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else [
                {"type": "image", "image": decoded_image(part)} if part["type"] == "image_url" else part for part in content]
            messages.append({"role": message["role"], "content": parts})
        inputs = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                    return_tensors="pt").to(self.device)
        sampling = {"do_sample": True, "temperature": options.temperature, "top_p": options.top_p} if options.sampled else {
            "do_sample": False}
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            output = self.model.generate(**inputs, max_new_tokens=options.max_new_tokens, **sampling)
        return self.processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def cache_dir(config: "Config") -> Path:
    """calibration.cache_dir (or ~/.cache/iapas/llm), under hepe/."""
    return Path(config.calibration.cache_dir or Path.home() / ".cache" / "iapas" / "llm") / "hepe"


def mllm_for_config(config: "Config"):
    """The step-one MLLM the config names (an endpoint URL, else a local directory), or None when none is named."""
    rules = config.clip_methods
    if rules.hepe_mllm_url:
        return OpenAICompatibleLLM(rules.hepe_mllm_url, rules.hepe_mllm_model, config.calibration.llm_timeout)
    if rules.hepe_mllm_model:
        from ...device import resolve_device

        return TransformersVLM(Path(rules.hepe_mllm_model), str(resolve_device(config.device)))
    return None


def step_two_for_config(config: "Config", mllm) -> object:
    """The step-two LLM: the MLLM itself by default, else a text backend (--step-two-llm with --llm-url/--llm-model)."""
    backend = config.clip_methods.hepe_step_two
    if backend not in STEP_TWO_BACKENDS:
        raise ConfigError(f"HEPE --step-two-llm must be one of {', '.join(STEP_TWO_BACKENDS)}, got {backend!r}")
    if backend == "lexicon":
        raise ConfigError("HEPE step two cannot use the lexicon backend: it ignores the description it is given; "
                          "use mllm, openai, gguf or hf")
    if backend == "mllm":
        return mllm
    calibration = config.calibration
    return LLMS.get(backend)(LLMSpec(backend, calibration.llm_model, calibration.llm_url, timeout_s=calibration.llm_timeout))


def agent_for_config(config: "Config", settings: AgentSettings = AgentSettings()) -> PromptAgent | None:
    """The configured agent behind the answer cache, or None when no MLLM is named (HEPE then runs on fixed prompts)."""
    mllm = mllm_for_config(config)
    if mllm is None:
        return None
    folder = cache_dir(config)
    return PromptAgent(CachedLLM(mllm, folder), CachedLLM(step_two_for_config(config, mllm), folder), settings)

