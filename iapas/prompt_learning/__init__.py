"""What the learned CLIP methods share: losses, map smoothing and the training loop.

AdaCLIP, AnomalyCLIP, FAPrompt and GenCLIP all train a few prompt tensors on a frozen CLIP with
focal + Dice losses on anomaly maps, and all smooth their test maps with a Gaussian; these pieces are
written once here, with what the AnomalyCLIP family shares: `vision.py` (518 px inputs, V-V attention
path), `text_prompts.py` (sentences with learned slots, deep text prompts), `checkpoints.py` (the
reference's `{"prompt_learner": ...}` layout, and its full official form) and `rules.py` (where the
official recipe follows the authors' code rather than iapas's default). The frozen CLIP itself (tokens, layer features, prompted encoders) is
`iapas.backends.clip.ClipBackbone`.
"""
from .losses import dice_loss, focal_loss, two_class_focal_loss
from .smoothing import gaussian_smooth
from .mosaic import mosaic
from .training import BatchLoader, PromptTrainer, TrainOptions, training_samples, training_samples_from

__all__ = ["BatchLoader", "PromptTrainer", "TrainOptions", "dice_loss", "focal_loss", "gaussian_smooth", "mosaic", "training_samples",
           "training_samples_from", "two_class_focal_loss"]
