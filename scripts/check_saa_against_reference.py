"""Run the official SAA+ beside iapas's on the same random weights and image; report boxes, masks, saliency and map differences.

Usage:
    python scripts/check_saa_against_reference.py PATH_TO_Segment-Any-Anomaly_CHECKOUT --transformers4 DIR [--tiny] [--sam vit_b]

Not a unit test, and not run in CI: github caoyunkang/Segment-Any-Anomaly has no licence, so its code cannot ship
with iapas or sit in ../shared/reference; fetch it yourself beside iapas. Its bundled GroundingDINO needs a
transformers 4.x (its BertModelWarper uses BertModel.get_extended_attention_mask, gone in 5.x): install one into
a folder of its own (`pip install --target DIR "transformers<5"`) and pass it as --transformers4; the reference half
runs in a subprocess with DIR and the checkout first on its path, iapas's half here.

The reference half builds Grounding DINO (SwinT-OGC config; --tiny: fewer and narrower layers, for a CPU), SAM
(ViT-H as SAA+'s build_sam; --sam vit_b for a CPU) and timm's wide_resnet50_2 with seeded random weights, saves
them as the released files are saved, and runs SAA+'s Model on one synthetic image with its own MVTec AD prompts,
recording every box its filter keeps. It is changed only where it cannot run offline: the BERT of Grounding DINO is
a local random one, and timm loads the saved file instead of downloading. Grounding DINO's box head starts at zero
(every box the same size); its last layers are randomised so the area rules have something to choose from.
iapas's half loads the same three files through its own loaders and prints the differences.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SEED = 111
CATEGORY = "metal_nut"
TINY_DINO = {"enc_layers": 2, "dec_layers": 2, "dim_feedforward": 256, "num_queries": 100}


def reference_half(checkout: Path, work: Path, tiny: bool, sam: str) -> None:
    """In the subprocess: random weights saved, SAA+ run, its intermediates written to work/reference.npz."""
    import cv2
    import timm
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    sys.path[:0] = [str(checkout), str(checkout / "GroundingDINO"), str(checkout / "SAM")]
    from iapas.weights.demo import write_demo_vocab  # a BERT vocabulary holding every word SAA+'s prompts use

    bert = work / "bert-base-uncased"
    bert.mkdir(exist_ok=True)
    write_demo_vocab(bert / "vocab.txt")
    tokenizer = BertTokenizerFast(str(bert / "vocab.txt"), do_lower_case=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                        intermediate_size=1024)
    config.save_pretrained(bert)
    import GroundingDINO.groundingdino.util.get_tokenlizer as named
    import groundingdino.util.get_tokenlizer as plain

    for module in (named, plain):  # the released BERT is fetched from the hub by name; a local random one instead
        module.get_tokenlizer = lambda _: tokenizer
        module.get_pretrained_language_model = lambda _: BertModel(config)
    config_file = checkout / "GroundingDINO/groundingdino/config/GroundingDINO_SwinT_OGC.py"
    if tiny:
        text = config_file.read_text() + "".join(f"\n{key} = {value!r}" for key, value in TINY_DINO.items())
        config_file = work / "GroundingDINO_SwinT_OGC_tiny.py"
        config_file.write_text(text)
    from GroundingDINO.groundingdino.models import build_model
    from GroundingDINO.groundingdino.util.slconfig import SLConfig

    torch.manual_seed(SEED)
    args = SLConfig.fromfile(str(config_file))
    args.device = "cpu"
    dino = build_model(args)
    with torch.no_grad():
        for head in dino.bbox_embed:
            torch.nn.init.normal_(head.layers[-1].weight, std=0.5)
            torch.nn.init.normal_(head.layers[-1].bias, std=0.5)
    torch.save({"model": dino.state_dict()}, work / "groundingdino_random.pth")

    import SAA.model as saa_model
    from SAM.segment_anything import build_sam_vit_b, build_sam_vit_h

    builder = build_sam_vit_h if sam == "vit_h" else build_sam_vit_b
    torch.manual_seed(SEED)
    torch.save(builder().state_dict(), work / "sam_random.pth")
    saa_model.build_sam = builder
    torch.manual_seed(SEED)
    torch.save(timm.create_model("wide_resnet50_2").state_dict(), work / "wide_resnet50_2_random.pth")
    create = timm.create_model

    def offline(*positional, checkpoint_path="", pretrained=False, **keywords):
        model = create(*positional, pretrained=False, **keywords)
        state = torch.load(work / "wide_resnet50_2_random.pth", map_location="cpu")
        model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
        return model

    import SAA.modelinet as modelinet
    modelinet.timm.create_model = offline

    import SAA as reference
    model = reference.Model(dino_config_file=str(config_file), dino_checkpoint=str(work / "groundingdino_random.pth"),
                            sam_checkpoint=str(work / "sam_random.pth"), box_threshold=0.1, text_threshold=0.1,
                            out_size=400, device="cpu")
    model.set_ensemble_text_prompts(reference.build_general_prompts(CATEGORY) + reference.manul_prompts["mvtec"][CATEGORY])
    model.set_property_text_prompts(reference.property_prompts["mvtec"][CATEGORY])
    kept, refined = [], []
    suppress, refine = model.bbox_suppression, model.region_refine
    model.bbox_suppression = lambda *a, **k: kept.append(suppress(*a, **k)) or kept[-1]
    model.region_refine = lambda *a, **k: refined.append(refine(*a, **k)) or refined[-1]
    image = cv2.imread(str(work / "image.png"), cv2.IMREAD_COLOR)  # BGR, as eval_SAA.py's dataset reads it
    anomaly_map, appendix = model(image)
    def rows(call) -> np.ndarray:  # one bbox_suppression call's kept boxes as (cx, cy, w, h, score) rows
        boxes, scores, _ = call
        return np.zeros((0, 5)) if boxes is None else np.concatenate([boxes.numpy(), np.array(scores)[:, None]], axis=1)

    np.savez(work / "reference.npz", map=anomaly_map, saliency=appendix["similarity_map"], object_boxes=rows(kept[0]),
             anomaly_boxes=np.concatenate([rows(call) for call in kept[1:]] or [np.zeros((0, 5))]),
             masks=np.concatenate([np.asarray(m) for m, _ in refined]) if refined else np.zeros((0, *image.shape[:2]), bool))
    (work / "reference.json").write_text(json.dumps({"phrases": [p for *_, p in kept if p is not None]}))


def iapas_half(work: Path) -> dict[str, str]:
    """Our SAA+ on the saved files and image; the differences, one line each."""
    import torch

    from iapas.backends.grounding_dino import HFGroundingDino
    from iapas.backends.sam import load_original_sam
    from iapas.images import load_image
    from iapas.methods.saa import SaaPlus, SaliencyNet
    from iapas.methods.saa.rules import output_map

    device = torch.device("cpu")
    method = SaaPlus(HFGroundingDino(work / "groundingdino_random.pth", device), load_original_sam(work / "sam_random.pth", device),
                     SaliencyNet(work / "wide_resnet50_2_random.pth", device), dataset="mvtec")
    method.prepare(CATEGORY, [], "object", work)
    parts = method.run(load_image(work / "image.png").pixels)
    reference = np.load(work / "reference.npz")

    def boxes(ours, theirs: np.ndarray) -> str:
        mine = np.concatenate([ours.cxcywh, ours.scores[:, None]], axis=1) if len(ours) else np.zeros((0, 5))
        if len(mine) != len(theirs):
            return f"{len(mine)} kept by iapas, {len(theirs)} by SAA+"
        order = lambda rows: rows[np.lexsort(rows.T[::-1])]  # noqa: E731 - boxes compared in one canonical order
        return f"{len(mine)} each, max |difference| {np.abs(order(mine) - order(theirs)).max(initial=0):.2e} (cx, cy, w, h, score)"

    # SAA+ calls SAM only for a pass that kept boxes; iapas's stand-in empty masks are left out
    masks = np.concatenate([parts["object_masks"][: len(parts["objects"])], parts["anomaly_masks"][: len(parts["anomalies"])]])
    theirs = reference["masks"]
    return {
        "object boxes": boxes(parts["objects"], reference["object_boxes"]),
        "anomaly boxes": boxes(parts["anomalies"], reference["anomaly_boxes"]),
        "masks": (f"{int((masks != theirs).sum())} of {masks.size} pixels differ" if masks.shape == theirs.shape
                  else f"shapes differ: {masks.shape} vs {theirs.shape}"),
        "saliency": f"max |difference| {np.abs(parts['saliency'] - reference['saliency']).max():.2e}",
        "400x400 map": f"max |difference| {np.abs(output_map(parts['map']) - reference['map']).max():.2e} "
                       f"(SAA+'s map max {reference['map'].max():.3f})",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a checkout of github caoyunkang/Segment-Any-Anomaly")
    parser.add_argument("--transformers4", type=Path, help="a folder holding transformers 4.x (pip install --target)")
    parser.add_argument("--tiny", action="store_true", help="a smaller Grounding DINO (for a CPU)")
    parser.add_argument("--sam", choices=("vit_h", "vit_b"), default="vit_h", help="SAA+ builds ViT-H; vit_b for a CPU")
    parser.add_argument("--work", type=Path, help="folder for the random weights and outputs (default: a temporary one)")
    parser.add_argument("--reference-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="saa-check-"))
    if args.reference_side:
        reference_half(args.checkout.resolve(), work, args.tiny, args.sam)
        return 0
    from PIL import Image

    from iapas.data.synth import synth_sample

    work.mkdir(parents=True, exist_ok=True)
    image, _ = synth_sample("washer", "scratch", np.random.default_rng(SEED), 256)
    Image.fromarray(image).save(work / "image.png")
    path = [str(args.transformers4)] if args.transformers4 else []
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(path + [str(Path(__file__).parents[1])]),
                   "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, __file__, str(args.checkout), "--work", str(work), "--sam", args.sam,
               "--reference-side"] + (["--tiny"] if args.tiny else [])
    subprocess.run(command, check=True, env=environment)
    (work / "groundingdino_random.pth.DEMO_WEIGHTS").write_text("random weights for the SAA+ check\n")
    for what, line in iapas_half(work).items():
        print(f"{what}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
