"""WinCLIP's compositional prompt ensembles: state words x templates, as each reference writes them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptEnsemble:
    """State words (with "{}" for the class name) combined with sentence templates (with "{}" for the state)."""

    normal_states: tuple[str, ...]
    anomalous_states: tuple[str, ...]
    templates: tuple[str, ...]

    def sentences(self, class_name: str) -> tuple[list[str], list[str]]:
        """Every (state x template) sentence of the normal and of the anomalous class."""
        def expand(states: tuple[str, ...]) -> list[str]:
            return [template.format(state.format(class_name)) for state in states for template in self.templates]

        return expand(self.normal_states), expand(self.anomalous_states)


# The normal states are the same in both references (and in the WinCLIP paper's Fig. 3).
_NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                  "{} without damage")
# Both references keep 4 of the paper's anomalous states ("broken {}" is left out by both).
_ANOMALOUS_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")

# caoyunkang/WinClip WinCLIP/ad_prompts.py: `state_level_normal_prompts`, `state_level_abnormal_prompts` and
# the 22 `template_level_prompts`, written without a final full stop.
CAOYUNKANG_PROMPTS = PromptEnsemble(
    _NORMAL_STATES,
    _ANOMALOUS_STATES,
    (
        "a cropped photo of the {}", "a cropped photo of a {}", "a close-up photo of a {}", "a close-up photo of the {}",
        "a bright photo of a {}", "a bright photo of the {}", "a dark photo of the {}", "a dark photo of a {}",
        "a jpeg corrupted photo of a {}", "a jpeg corrupted photo of the {}", "a blurry photo of the {}",
        "a blurry photo of a {}", "a photo of a {}", "a photo of the {}", "a photo of a small {}",
        "a photo of the small {}", "a photo of a large {}", "a photo of the large {}",
        "a photo of the {} for visual inspection", "a photo of a {} for visual inspection",
        "a photo of the {} for anomaly detection", "a photo of a {} for anomaly detection",
    ),
)

# anomalib src/anomalib/models/image/winclip/prompting.py: NORMAL_STATES, ANOMALOUS_STATES and 21 TEMPLATES
# with a full stop; its list has no "a cropped photo of a {}." and has "a jpeg corrupted photo of the {}." twice
# (so that sentence weighs double in the average), kept as is.
ANOMALIB_PROMPTS = PromptEnsemble(
    _NORMAL_STATES,
    _ANOMALOUS_STATES,
    (
        "a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
        "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.", "a dark photo of a {}.",
        "a jpeg corrupted photo of the {}.", "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.",
        "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.",
        "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
        "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
        "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.",
    ),
)
