"""Prompt checkpoints in the AnomalyCLIP/FAPrompt layout: `{"prompt_learner": state_dict}`, plus iapas's own record.

zqhang/AnomalyCLIP train.py and mala-lab/FAPrompt train.py save `torch.save({"prompt_learner":
prompt_learner.state_dict()}, "epoch_N.pth")`. iapas writes the same key (so a released file and one
of ours are read the same way) and adds an "iapas" entry with the method, its settings and the CLIP.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import WeightsError
from ..files import atomic_write

STATE_KEY = "prompt_learner"
RECORD_KEY = "iapas"


def save_prompt_learner(path: str | Path, state: dict[str, torch.Tensor], record: dict) -> Path:
    """Write the learned tensors under "prompt_learner" and iapas's record beside them, atomically."""
    payload = {STATE_KEY: {name: tensor.detach().cpu() for name, tensor in state.items()}, RECORD_KEY: record}
    return atomic_write(path, lambda temporary: torch.save(payload, temporary))


def load_prompt_learner(path: str | Path, method: str, hint: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The float32 learned tensors and iapas's record ({} for a released file) of a checkpoint; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{method} prompt weights not found: {path} ({hint})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state = payload[STATE_KEY]
        record = payload.get(RECORD_KEY, {})
        if record and record.get("method") != method:
            raise ValueError(f"it holds {record.get('method')} prompts")
    except Exception as error:
        raise WeightsError(f"not a {method} prompt checkpoint: {path} ({str(error).splitlines()[0][:120]})") from None
    return {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state.items()}, record


def load_learned(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, clip_name: str) -> None:
    """Copy the module's own tensors from `state` (a released file's frozen buffers and unused layers are ignored)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise WeightsError(f"{path} lacks {missing[0]} (and {len(missing) - 1} more): not a checkpoint of this method's layout")
    wrong = [name for name in own if own[name].shape != state[name].shape]
    if wrong:
        raise WeightsError(f"{path}: {wrong[0]} is {tuple(state[wrong[0]].shape)}, CLIP {clip_name!r} needs "
                           f"{tuple(own[wrong[0]].shape)}: the prompts were trained on another CLIP")
    module.load_state_dict({name: state[name] for name in own})


# The authors' test.py loads "prompt_learner" strictly into their prompt learner, whose state also holds frozen
# buffers and layers that never change the output; an official-layout checkpoint carries them too.
OFFICIAL_CONTEXT_LENGTH = 77  # zqhang/AnomalyCLIP prompt_ensemble.py tokenize: context_length 77, zero-padded
UNUSED_PROJECTION_WIDTH = 896  # prompt_ensemble.py: compound_prompt_projections = Linear(ctx_dim, 896), never called
LAYOUTS = ("iapas", "official")  # `iapas train --save-format`, `iapas weights to-official`


def official_sentence_state(backbone, sign: str, sentence: str, count: int, learned: int) -> dict[str, torch.Tensor]:
    """token_prefix_<sign>, token_suffix_<sign> and tokenized_prompts_<sign> of `count` copies of `sentence`.

    As zqhang/AnomalyCLIP prompt_ensemble.py (and mala-lab/FAPrompt FAPrompt.py) register them: the token ids
    zero-padded to 77, shaped (1, count, 77), and their word embeddings before and after the `learned` slots.
    """
    ids = backbone.tokenizer(sentence)["input_ids"]  # with the start and end tokens
    if len(ids) > OFFICIAL_CONTEXT_LENGTH:
        raise WeightsError(f"prompt {sentence!r} is longer than {OFFICIAL_CONTEXT_LENGTH} tokens")
    row = torch.zeros(OFFICIAL_CONTEXT_LENGTH, dtype=torch.int32)
    row[:len(ids)] = torch.tensor(ids, dtype=torch.int32)
    tokenized = row.expand(1, count, -1).contiguous()
    embedding = backbone.clip.text_model.embeddings.token_embedding
    with torch.no_grad():
        words = embedding(tokenized.long().to(embedding.weight.device)).float().cpu()
    return {f"token_prefix_{sign}": words[:, :, :1].contiguous(), f"token_suffix_{sign}": words[:, :, 1 + learned:].contiguous(),
            f"tokenized_prompts_{sign}": tokenized}


def unused_projections(depth: int, width: int) -> dict[str, torch.Tensor]:
    """compound_prompt_projections.<i> of the reference's prompt learners: registered, never called; zeros here."""
    state = {}
    for index in range(max(0, depth - 1)):
        state[f"compound_prompt_projections.{index}.weight"] = torch.zeros(UNUSED_PROJECTION_WIDTH, width)
        state[f"compound_prompt_projections.{index}.bias"] = torch.zeros(UNUSED_PROJECTION_WIDTH)
    return state
