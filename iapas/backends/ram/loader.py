"""Loading the released RAM / RAM++ checkpoints, the English tag list and the per-tag thresholds.

The checkpoints are read as released (`ram_swin_large_14m.pth`, `ram_plus_swin_large_14m.pth`: a dict whose
"model" entry is the state dict); every size is read off the tensors' shapes, so a tiny model saved in the
same layout loads through the same code. Rules follow recognize-anything's `ram/models/utils.py`
(load_checkpoint_swinlarge), `ram/models/ram.py` and `ram/models/ram_plus.py`, as cited beside each.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ...errors import WeightsError
from ..sam import read_checkpoint
from .model import RamModel, RamShape, TAG_COUNT
from .swin import SwinShape
from .tagging_head import HeadShape

TAG_DATA = Path(__file__).parents[2] / "resources" / "ram"  # the tag list and thresholds, with their NOTICE
TAG_LIST_FILE = TAG_DATA / "ram_tag_list.txt"
THRESHOLD_FILE = TAG_DATA / "ram_tag_list_threshold.txt"
DEFAULT_THRESHOLD = 0.68  # ram.py RAM(threshold=0.68): the threshold of any tag the threshold file does not list
UNUSED_FOR_TAGGING = ("tag_encoder.", "text_decoder.")  # RAM's captioning side (ram.py); RAM++ has none
REBUILT_BUFFERS = ("relative_position_index", "attn_mask")  # utils.py load_checkpoint_swinlarge deletes them too
HEAD_ATTENTION_HEADS = 4  # ram/configs/q2l_config.json num_attention_heads: the shapes cannot tell it


def tag_list() -> tuple[str, ...]:
    """RAM's 4585 English tags, in the order of the model's outputs (ram/data/ram_tag_list.txt)."""
    return tuple(TAG_LIST_FILE.read_text(encoding="utf-8").splitlines())


def class_thresholds(classes: int) -> torch.Tensor:
    """(classes,) probability thresholds: the file's value per tag, 0.68 beyond it (ram.py RAM.__init__)."""
    listed = [float(line) for line in THRESHOLD_FILE.read_text(encoding="utf-8").split()]
    thresholds = torch.full((classes,), DEFAULT_THRESHOLD)
    thresholds[: min(classes, len(listed))] = torch.tensor(listed[:classes])
    return thresholds


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    return len({match.group(1) for key in state if (match := re.match(pattern, key))})


def tagging_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors the tagging path uses, under the names RamModel gives them.

    utils.py load_checkpoint_swinlarge: older checkpoints name the tagging head `vision_multi`; the index
    buffers are rebuilt rather than loaded. In RAM the tag encoder's first layers are tied to the tagging head
    (ram.py tie_encoder_decoder_weights), and `tagging_head.*` is what a load leaves in the shared tensors,
    so the head is read from those keys.
    """
    kept = {}
    for key, value in state.items():
        key = re.sub(r"^module\.", "", key).replace("vision_multi", "tagging_head")
        if key.startswith(UNUSED_FOR_TAGGING) or key.rsplit(".", 1)[-1] in REBUILT_BUFFERS:
            continue
        kept[key] = value
    return kept


def shape_of(state: dict[str, torch.Tensor], path: Path) -> RamShape:
    """Every size of the model, read off the state dict's shapes."""
    needed = ("visual_encoder.patch_embed.proj.weight", "label_embed", "fc.weight", "image_proj.weight")
    missing = [key for key in needed if key not in state]
    if missing:
        raise WeightsError(f"{path} is not a RAM checkpoint (no {', '.join(missing)} in its state dict)")
    stages = _count(state, r"visual_encoder\.layers\.(\d+)\.")
    tables = [state[f"visual_encoder.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(stages)]
    window = (round(tables[0].shape[0] ** 0.5) + 1) // 2
    patch = state["visual_encoder.patch_embed.proj.weight"]
    embed_dim = int(patch.shape[0])
    swin = SwinShape(
        # ram.py: Swin-L at 384 px has 12-pixel windows (configs/swin/config_swinL_384.json), at 224 px 7
        image_size=384 if window == 12 else 224,
        patch_size=int(patch.shape[-1]),
        embed_dim=embed_dim,
        depths=tuple(_count(state, rf"visual_encoder\.layers\.{i}\.blocks\.(\d+)\.") for i in range(stages)),
        num_heads=tuple(int(table.shape[1]) for table in tables),
        window_size=int(window),
        mlp_ratio=state["visual_encoder.layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
    )
    layer = "tagging_head.encoder.layer.0."
    head = HeadShape(
        layers=_count(state, r"tagging_head\.encoder\.layer\.(\d+)\."),
        hidden=int(state["fc.weight"].shape[1]),
        heads=HEAD_ATTENTION_HEADS,
        intermediate=int(state[layer + "intermediate.dense.weight"].shape[0]),
        image_width=int(state[layer + "crossattention.self.key.weight"].shape[1]),
    )
    rows = int(state["label_embed"].shape[0])
    # ram_plus.py: RAM++ is told apart by its reweighting scale; its label_embed holds classes x descriptions rows
    descriptions = rows // TAG_COUNT if "reweight_scale" in state else 1
    if rows != TAG_COUNT * descriptions:
        raise WeightsError(f"{path}: label_embed has {rows} rows; RAM's tag list has {TAG_COUNT} tags"
                           + (" (RAM++: a multiple of it)" if "reweight_scale" in state else ""))
    return RamShape(swin=swin, head=head, classes=TAG_COUNT, descriptions=descriptions)


def load_ram_model(path: Path, device: str | torch.device = "cpu") -> RamModel:
    """A RAM or RAM++ model from its released checkpoint, in eval mode on `device`."""
    state = tagging_state(read_checkpoint(Path(path), mmap=True))
    try:
        shape = shape_of(state, Path(path))
    except (KeyError, IndexError) as error:  # a tensor the layout needs is absent
        raise WeightsError(f"{path} is not a RAM checkpoint (incomplete: {error})") from None
    with torch.device("meta"):
        model = RamModel(shape)
    # utils.py load_checkpoint_swinlarge loads with strict=False: tensors the model has no place for are
    # ignored there and here; a tensor the model needs and the file lacks is an error here (RAM would keep zeros)
    missing = model.load_state_dict(state, strict=False, assign=True).missing_keys
    if missing:
        raise WeightsError(f"{path} lacks RAM tensors ({', '.join(missing[:3])}...); is it a RAM checkpoint?")
    model.rebuild_buffers()
    return model.float().eval().to(device)
