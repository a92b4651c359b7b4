"""Run the official AdaCLIP code beside iapas's on one random CLIP and compare maps, scores, loss and gradients.

Usage: python scripts/check_adaclip_against_reference.py PATH_TO_caoyunkang_AdaCLIP_CHECKOUT

Not a unit test: it needs a checkout of github caoyunkang/AdaCLIP and open_clip (for CLIP's BPE file),
and takes about half a minute on a CPU. The reference's `method/` package and `loss.py` are copied to a
temporary folder and changed only where they cannot run here: `method/__init__.py` emptied (it imports the
trainer's plotting and data tools), `pkg_resources` replaced by `packaging`, `.half()` casts made `.float()`
(fp16 on a CPU would round the prompts), KMeans seeded as iapas seeds it, and in-place normalisations made
out-of-place (recent torch refuses to differentiate through them).
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch

PATCHES = {
    "method/adaclip.py": [
        ("from pkg_resources import packaging", "import packaging.version"),
        (".half()", ".float()"),
        ('KMeans(n_clusters=self.k_clusters, n_init="auto")', 'KMeans(n_clusters=self.k_clusters, n_init="auto", random_state=111)'),
        ("class_embeddings /= class_embeddings.norm(dim=-1, keepdim=True)",
         "class_embeddings = class_embeddings / class_embeddings.norm(dim=-1, keepdim=True)"),
        ("class_embedding /= class_embedding.norm()", "class_embedding = class_embedding / class_embedding.norm()"),
        ("proj_patch_tokens[layer] /= proj_patch_tokens[layer].norm(dim=-1, keepdim=True)",
         "proj_patch_tokens[layer] = proj_patch_tokens[layer] / proj_patch_tokens[layer].norm(dim=-1, keepdim=True)"),
        ("proj_cls_tokens /= proj_cls_tokens.norm(dim=-1, keepdim=True)",
         "proj_cls_tokens = proj_cls_tokens / proj_cls_tokens.norm(dim=-1, keepdim=True)"),
    ],
}
LEARNED = ("text_prompter", "visual_prompter", "patch_token_layer", "cls_token_layer",
           "dynamic_visual_prompt_generator", "dynamic_text_prompt_generator")


def runnable_reference(checkout: Path, work: Path) -> Path:
    """A patched copy of the reference's `method/` and `loss.py` under `work`."""
    import open_clip

    target = work / "reference"
    shutil.copytree(checkout / "method", target / "method")
    shutil.copy(checkout / "loss.py", target / "loss.py")
    (target / "method" / "__init__.py").write_text("", encoding="utf-8")
    shutil.copy(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", target / "method")  # may be an LFS pointer there
    for name, replacements in PATCHES.items():
        text = (target / name).read_text(encoding="utf-8")
        for old, new in replacements:
            if old not in text:
                raise SystemExit(f"the reference changed: {old!r} not found in {name}")
            text = text.replace(old, new)
        (target / name).write_text(text, encoding="utf-8")
    return target


def main(checkout: Path) -> int:
    warnings.filterwarnings("ignore")
    from iapas.backends.clip import ClipBackbone
    from iapas.backends.openclip_convert import convert_openclip_checkpoint
    from iapas.methods.adaclip.model import AdaClip
    from iapas.methods.adaclip.train import adaclip_loss

    work = Path(tempfile.mkdtemp(prefix="adaclip-check-"))
    sys.path.insert(0, str(runnable_reference(checkout, work)))
    from loss import BinaryDiceLoss, FocalLoss
    from method.adaclip import AdaCLIP
    from method.clip_model import CLIP, resize_pos_embed

    torch.manual_seed(0)
    config = dict(embed_dim=64, vision_cfg=dict(image_size=28, layers=4, width=128, patch_size=14),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=4))
    small = CLIP(**config).eval()
    with torch.no_grad():  # norms and biases away from their initial 1 / 0, so that they matter
        for name, parameter in small.named_parameters():
            if parameter.dim() == 1:
                parameter.add_(0.1 * torch.randn_like(parameter))
    torch.save(small.state_dict(), work / "clip.pt")
    backbone = ClipBackbone(convert_openclip_checkpoint(work / "clip.pt", work / "clip_hf"))
    state = small.state_dict()
    clip_518 = CLIP(**{**config, "vision_cfg": {**config["vision_cfg"], "image_size": 518}}).eval()
    resize_pos_embed(state, clip_518)  # what the official create_model does for 518 px
    clip_518.load_state_dict(state)
    reference = AdaCLIP(freeze_clip=clip_518, text_channel=64, visual_channel=128, prompting_length=5, prompting_depth=4,
                        prompting_branch="VL", prompting_type="SD", use_hsf=True, k_clusters=20,
                        output_layers=[1, 2, 3, 4], device="cpu", image_size=518).eval()
    checkpoint = {f"clip_model.{k}": v for k, v in reference.state_dict().items() if k.split(".")[0] in LEARNED}
    torch.save(checkpoint, work / "pretrained_check.pth")
    ours = AdaClip.load(work / "pretrained_check.pth", backbone)

    pixels = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        reference_map, reference_score = reference(pixels, ["candle"], aggregation=True)
        output = ours(pixels, ["candle"])
    map_difference = float((reference_map - ours.anomaly_map(output.layer_logits)).abs().max())
    score_difference = abs(float(reference_score[0]) - float(output.image_probabilities[0, 1]))

    mask = torch.zeros(1, 1, 518, 518)
    mask[..., 100:200, 150:300] = 1
    label = torch.tensor([1.0])
    maps, score = reference(pixels, ["candle"], aggregation=False)
    focal, dice, gt = FocalLoss(), BinaryDiceLoss(), mask.squeeze()  # method/trainer.py train_one_batch
    reference_loss = focal(score, label.unsqueeze(1)) + sum(focal(m, gt) + dice(m[:, 1], gt) + dice(m[:, 0], 1 - gt) for m in maps)
    our_loss = adaclip_loss(ours, pixels, mask[:, 0], label, ["candle"])
    reference_loss.backward()
    our_loss.backward()
    reference_parameters = dict(reference.named_parameters())
    gradient_difference = 0.0
    for name, parameter in ours.prompts.named_parameters():
        other = reference_parameters[name].grad
        if (parameter.grad is None) != (other is None):
            print(f"gradient present on one side only: {name}")
            return 1
        if other is not None:
            gradient_difference = max(gradient_difference, float((parameter.grad - other).abs().max() / other.abs().max()))
    print(f"map max |difference| {map_difference:.2e}; HSF score |difference| {score_difference:.2e}; "
          f"loss {float(reference_loss):.6f} vs {float(our_loss):.6f}; gradients max relative difference {gradient_difference:.2e}")
    agree = map_difference < 1e-4 and score_difference < 1e-4 and abs(float(reference_loss - our_loss)) < 1e-4 \
        and gradient_difference < 1e-3
    print("agree" if agree else "DIFFER")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if agree else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.splitlines()[2])
    raise SystemExit(main(Path(sys.argv[1])))
