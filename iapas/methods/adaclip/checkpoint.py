"""AdaCLIP checkpoints: ours (learned tensors + settings) and the official released ones, told apart by their keys.

The official `AdaCLIP_Trainer.save` (caoyunkang/AdaCLIP method/trainer.py) writes a flat dict of the
learnable tensors only, each key `clip_model.<module>.<...>` with the modules of `AdaClipPrompts`
(38 tensors for ViT-L-14-336 at prompting depth 4 and length 5). The released files
(`pretrained_all.pth`, `pretrained_mvtec_colondb.pth`, `pretrained_visa_clinicdb.pth`) are in that
format and were trained with train.py's defaults: 518 px, feature layers n/4, 2n/4, 3n/4, n.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ...errors import WeightsError
from ...files import atomic_write
from .model import INPUT_SIZE, AdaClipSettings, check_input_size, default_layers

if TYPE_CHECKING:
    from ...backends.clip import ClipBackbone
    from .model import AdaClip

CHECKPOINT_FORMAT = 3  # 3: the official module layout (2, our earlier layout, is not read)
OFFICIAL = "official AdaCLIP"
OFFICIAL_PREFIX = "clip_model."  # method/trainer.py: the trainer holds the model as `self.clip_model`


def save_prompts(model: "AdaClip", path: str | Path, extra: dict | None = None) -> Path:
    """Our format: the learned tensors (official names), the settings and the CLIP's name."""
    payload = {"format": CHECKPOINT_FORMAT, "settings": asdict(model.settings), "clip": model.backbone.name,
               "prompts": model.prompts.state_dict(), **(extra or {})}
    return atomic_write(path, lambda temporary: torch.save(payload, temporary))


def is_official(payload: dict) -> bool:
    """Whether a loaded file is an official AdaCLIP checkpoint: a flat dict of `clip_model.*` tensors."""
    return bool(payload) and all(isinstance(key, str) and key.startswith(OFFICIAL_PREFIX) for key in payload)


def official_settings(state: dict[str, torch.Tensor], vision_depth: int) -> AdaClipSettings:
    """The settings an official checkpoint was trained with, read off its tensors and train.py's defaults."""
    def count(module: str) -> int:
        return len({key.split(".")[2] for key in state if key.startswith(f"{module}.")})

    depth = count("text_prompter.static_prompts")
    layers = count("patch_token_layer.head")
    if not depth or not layers or "text_prompter.static_prompts.0" not in state:
        raise ValueError("no static prompts or patch heads: not trained with prompting type 'SD' on both branches")
    feature_layers = tuple(vision_depth // 4 * k for k in range(1, layers + 1))  # train.py: substage multiples
    if layers != 4 or not feature_layers[0]:
        feature_layers = default_layers(vision_depth)
    return AdaClipSettings(feature_layers, int(state["text_prompter.static_prompts.0"].shape[0]), depth, INPUT_SIZE)


def read_checkpoint(path: str | Path, vision_depth: int) -> tuple[AdaClipSettings, dict[str, torch.Tensor], str]:
    """Settings, learned tensors (our names) and origin of a checkpoint file, ours or official (told by its keys)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"AdaCLIP prompt weights not found: {path} (train them with `iapas train adaclip`, "
                           "or get a released one: `iapas weights list`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict):
            raise ValueError("not a dict of tensors")
        if is_official(payload):
            state = {key[len(OFFICIAL_PREFIX):]: value for key, value in payload.items()}
            return official_settings(state, vision_depth), state, OFFICIAL
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {payload.get('format')}, this iapas reads format {CHECKPOINT_FORMAT}; retrain")
        settings = AdaClipSettings(**{**payload["settings"], "layers": tuple(payload["settings"]["layers"])})
        return settings, payload["prompts"], str(payload.get("clip"))
    except Exception as error:
        raise WeightsError(f"not an AdaCLIP prompt checkpoint: {path} ({str(error).splitlines()[0][:120]})") from None


def load_into(prompts: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, trained_on: str, clip: str) -> None:
    """Copy the tensors into `prompts`, every key and shape checked first; a one-line WeightsError names the first misfit."""
    expected = prompts.state_dict()
    wrong = [f"{key} {tuple(value.shape)} vs {tuple(expected[key].shape)}" for key, value in state.items()
             if key in expected and value.shape != expected[key].shape]
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if wrong or missing or unexpected:
        detail = (wrong or [f"missing {k}" for k in missing] or [f"unexpected {k}" for k in unexpected])[0]
        hint = " (the released checkpoints need ViT-L-14-336)" if trained_on == OFFICIAL else ""
        raise WeightsError(f"{path} ({trained_on}) does not fit CLIP {clip!r}: {detail}{hint}")
    prompts.load_state_dict({key: value.float() for key, value in state.items()})


def load_prompts(cls: type["AdaClip"], path: str | Path, backbone: "ClipBackbone", image_size: int = 0,
                 **rules) -> "AdaClip":
    """Trained prompts on top of a frozen CLIP, at `image_size` px (0: the checkpoint's); one-line errors when they do not fit."""
    settings, state, trained_on = read_checkpoint(path, backbone.depth)
    if image_size:  # the learned tensors do not depend on the input size: the position embeddings are resized
        settings = replace(settings, image_size=check_input_size(image_size, backbone))
    model = cls(backbone, settings, **rules)
    load_into(model.prompts, state, path, trained_on, backbone.name)
    return model.eval()


def official_layout_problem(settings: AdaClipSettings) -> str:
    """Why the official code could not run these settings as trained ("" when it can).

    caoyunkang/AdaCLIP train.py / test.py build the feature layers from the backbone (`substage`: every
    quarter of the depth) and take the input size, prompt depth and length as arguments, so only the
    layers must have the official layout; the other three are passed to test.py.
    """
    layers = tuple(settings.layers)
    quarter = layers[-1] // 4 if layers else 0
    if len(layers) != 4 or not quarter or layers != tuple(quarter * k for k in range(1, 5)):
        return f"feature layers {list(layers)}: the official code uses four at every quarter of the depth (e.g. 6, 12, 18, 24)"
    return ""


def official_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The learned tensors as method/trainer.py `save` writes them: a flat dict, each name under `clip_model.`."""
    return {OFFICIAL_PREFIX + key: value.detach().float().cpu().contiguous() for key, value in state.items()}


def to_official(source: str | Path, destination: str | Path) -> Path:
    """Write an iapas AdaCLIP checkpoint in the official layout, which caoyunkang/AdaCLIP test.py loads (`--ckt_path`).

    The official `AdaCLIP_Trainer.load` reads with strict=False, so a wrong name would load as nothing
    without a word: every name and shape here is the official model's (tests/test_adaclip_reference.py).
    Settings the official code cannot run as trained are refused; the others are printed for test.py.
    """
    settings, state, _ = read_checkpoint(source, vision_depth=0)  # the depth only matters for reading an official file
    problem = official_layout_problem(settings)
    if problem:
        raise WeightsError(f"{source} cannot be written for the official AdaCLIP code: {problem}")
    payload = official_state(state)
    return atomic_write(destination, lambda temporary: torch.save(payload, temporary))


def official_arguments(settings: AdaClipSettings) -> str:
    """The caoyunkang/AdaCLIP test.py arguments that run a converted checkpoint as it was trained."""
    return (f"--image_size {settings.image_size} --prompting_depth {settings.prompt_depth} "
            f"--prompting_length {settings.prompt_length}")
