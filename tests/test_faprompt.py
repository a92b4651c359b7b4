"""FAPrompt's rules on hand cases, and the method on a tiny random CLIP loaded through the real loader."""
import json

import numpy as np
import pytest
import torch

from iapas.cli import main
from iapas.errors import WeightsError
from iapas.methods.faprompt.model import FAPrompt, image_score, orthogonality_loss, top_patch_tokens
from iapas.methods.faprompt.loss import faprompt_loss, image_focal_loss, prior_loss
from iapas.methods.faprompt.train import train_faprompt
from iapas.prompt_learning import TrainOptions


def image(seed=0, shape=(50, 60, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_orthogonality_loss_of_orthogonal_and_equal_prompts():
    assert float(orthogonality_loss(torch.eye(4) * 3)) == pytest.approx(0.0)  # orthogonal: nothing to push apart
    equal = torch.tensor([[1.0, 2.0, 2.0]]).repeat(3, 1)
    assert float(orthogonality_loss(equal)) == pytest.approx(3.0)  # 3 pairs, |cos| = 1 each
    opposite = torch.tensor([[1.0, 0.0], [-2.0, 0.0]])
    assert float(orthogonality_loss(opposite)) == pytest.approx(1.0)  # the absolute cosine: opposite is not orthogonal


def test_dap_selects_the_top_patches_in_order():
    patches = torch.arange(12.0).reshape(1, 4, 3)  # patch i is [3i, 3i+1, 3i+2]
    scores = torch.tensor([[0.2, 0.9, 0.1, 0.5]])
    assert top_patch_tokens(patches, scores, 2).tolist() == [[[3.0, 4.0, 5.0], [9.0, 10.0, 11.0]]]  # patches 1 then 3
    two = torch.stack([patches[0], patches[0].flip(0)])
    assert top_patch_tokens(two, torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 2), 1)[:, 0].tolist() == [[9.0, 10.0, 11.0], [0.0, 1.0, 2.0]]


def test_eq9_image_score_and_the_image_losses_on_known_values():
    # 0.5 x (0.8 + (2 x 0.6 + 0.9) / 3) = 0.5 x (0.8 + 0.7)
    assert float(image_score(torch.tensor(0.8), torch.tensor(0.6), torch.tensor(0.9))) == pytest.approx(0.75)
    bias = torch.tensor([[1.0, 3.0], [2.0, 2.0], [0.0, 4.0]])
    # only normal images (label 0) pay for their prior: mean squares 5 and 8
    assert float(prior_loss(bias, torch.tensor([0.0, 1.0, 0.0]))) == pytest.approx(5.0 + 8.0)
    bce = float(torch.nn.functional.softplus(torch.tensor(-0.75)))  # BCE with logits of score 0.75 for an anomaly
    assert float(image_focal_loss(torch.tensor([0.75]), torch.tensor([1.0]))) == pytest.approx((1 - np.exp(-bce)) ** 2 * bce)


def test_forward_follows_cap_and_dap(backbone):
    torch.manual_seed(0)
    model = FAPrompt(backbone).eval()
    pixels = backbone.preprocess([image(1), image(2)], model.input_size)
    with torch.no_grad():
        outputs = model(pixels)
        normal, abnormal = model._encode(model.prompts.ctx_neg)
    assert outputs.static.shape == outputs.prior.shape == (2, 36, 2) and outputs.abnormal.shape == (10, backbone.embed_dim)
    torch.testing.assert_close(outputs.abnormal, abnormal[0])
    # DAP: the prior network reads the 10 patches the prompt-only map scores highest
    _, patches = model.encode_image(pixels)
    selected = top_patch_tokens(patches, outputs.static[..., 1], 10)
    torch.testing.assert_close(outputs.bias, model.prompts.patch_meta_net(selected.flatten(1)))
    # Eq. 9 from the outputs' own parts
    expected = image_score(outputs.image_logits.softmax(-1)[:, 1], outputs.static[..., 1].max(1).values,
                           outputs.prior[..., 1].max(1).values)
    torch.testing.assert_close(outputs.score, expected)
    loss = faprompt_loss(model.train(), pixels, torch.zeros(2, 48, 48), torch.tensor([0.0, 1.0]))
    loss.backward()
    assert model.prompts.ctx_neg.grad.abs().sum() > 0 and model.prompts.patch_meta_net.linear1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.clip.parameters())  # CLIP stays frozen
    # a zero prior leaves the abnormality prompts as they are: both maps agree
    with torch.no_grad():
        model.prompts.patch_meta_net.linear2.weight.zero_()
        model.prompts.patch_meta_net.linear2.bias.zero_()
        unbiased = model(pixels)
    torch.testing.assert_close(unbiased.prior, unbiased.static)


def test_save_load_round_trip(backbone, tmp_path):
    torch.manual_seed(2)
    model = FAPrompt(backbone).eval()
    before = model.segment(image(3))
    assert before.anomaly_map.shape == (50, 60) and 0 <= before.image_score <= 1
    loaded = FAPrompt.load(model.save(tmp_path / "fa.pt"), backbone)
    after = loaded.segment(image(3))
    np.testing.assert_array_equal(after.anomaly_map, before.anomaly_map)
    assert after.image_score == before.image_score
    with pytest.raises(WeightsError, match="faprompt prompt weights not found"):
        FAPrompt.load(tmp_path / "none.pt", backbone)
    from iapas.methods.anomalyclip.model import AnomalyClip

    AnomalyClip(backbone).save(tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="it holds anomalyclip prompts"):
        FAPrompt.load(tmp_path / "other.pt", backbone)


def test_training_lowers_the_loss_and_resumes(clip_dir, washer_hole_root, tmp_path):
    def options(folder, epochs):
        return TrainOptions("mvtec", washer_hole_root, tmp_path / folder, clip_dir, epochs=epochs, batch_size=4,
                            learning_rate=1e-2, limit=4, progress=False)

    _, losses = train_faprompt(options("full", 8))
    assert len(losses) == 8 and np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2])
    train_faprompt(options("cut", 3))
    _, resumed = train_faprompt(options("cut", 8))
    assert len(resumed) == 5 and resumed == pytest.approx(losses[3:], rel=1e-4)
    assert json.loads((tmp_path / "cut" / "train_log.json").read_text())["losses"] == pytest.approx(losses, rel=1e-4)


def test_cli_train_segment_and_bench(capsys, weights_dir, washer_hole_root, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert main(["train", "faprompt", "--dataset", "mvtec", "--root", str(washer_hole_root), "-o", str(ckpt), "--epochs", "1",
                 "--limit", "2", "--weights", str(weights_dir), "--no-progress"]) == 0
    assert "FAPrompt prompts: " in capsys.readouterr().err
    prompts = str(ckpt / "faprompt_prompts.pt")
    picture = next((washer_hole_root / "washer" / "test" / "hole").glob("*.png"))
    code = main(["segment", str(picture), "--method", "faprompt", "--prompts", prompts, "-o", str(tmp_path / "out"),
                 "--weights", str(weights_dir), "--no-progress"])
    record = json.loads((tmp_path / "out" / f"{picture.name}.json").read_text())
    assert code == 0 and record["method"] == "faprompt" and np.load(tmp_path / "out" / f"{picture.name}.npy").shape == (48, 48)
    assert main(["bench", str(picture), "--method", "faprompt", "--prompts", prompts, "--repeat", "1",
                 "--weights", str(weights_dir)]) == 0
    capsys.readouterr()
    assert main(["train", "faprompt", "--dataset", "mvtec", "--root", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x"),
                 "--weights", str(weights_dir)]) == 2
    err = capsys.readouterr().err
    assert "iapas: error: mvtec root not found" in err and "Traceback" not in err


def test_a_checkpoint_written_by_the_reference_train_py_loads(backbone, tmp_path):
    """Keys and shapes of mala-lab/FAPrompt FAPrompt.py's state dict (random values), saved as its train.py saves it."""
    model = FAPrompt(backbone)
    settings, width, embed = model.settings, backbone.clip.config.text_config.hidden_size, backbone.embed_dim
    generator = torch.Generator().manual_seed(0)
    state = {"ctx_pos": torch.randn(1, 1, 5, width, generator=generator).half(),
             "ctx_neg": torch.randn(1, 10, 2, width, generator=generator).half(),
             "patch_meta_net.linear1.weight": torch.randn(embed * 10 // 16, embed * 10, generator=generator),
             "patch_meta_net.linear1.bias": torch.randn(embed * 10 // 16, generator=generator),
             "patch_meta_net.linear2.weight": torch.randn(width, embed * 10 // 16, generator=generator),
             "patch_meta_net.linear2.bias": torch.randn(width, generator=generator),
             "token_prefix_pos": torch.zeros(1, 1, 1, width), "token_suffix_pos": torch.zeros(1, 1, 71, width),
             "token_prefix_neg": torch.zeros(1, 10, 1, width), "token_suffix_neg": torch.zeros(1, 10, 69, width),
             "tokenized_prompts_pos": torch.zeros(1, 1, 77, dtype=torch.int32),
             "tokenized_prompts_neg": torch.zeros(1, 10, 77, dtype=torch.int32)}
    for i in range(settings.text_depth - 1):
        state[f"compound_prompts_text.{i}"] = torch.randn(4, width, generator=generator)
        state[f"compound_prompt_projections.{i}.weight"] = torch.randn(896, width, generator=generator)
        state[f"compound_prompt_projections.{i}.bias"] = torch.randn(896, generator=generator)
    torch.save({"prompt_learner": state}, tmp_path / "epoch_7.pth")
    loaded = FAPrompt.load(tmp_path / "epoch_7.pth", backbone)
    torch.testing.assert_close(loaded.prompts.ctx_neg, state["ctx_neg"].float())
    torch.testing.assert_close(loaded.prompts.patch_meta_net.linear2.bias, state["patch_meta_net.linear2.bias"])
    assert 0 <= loaded.segment(image(7)).image_score <= 1
