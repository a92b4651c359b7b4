"""A detector that answers from a script, for tests that set what Grounding DINO 'found' and check what it was asked."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScriptedDetector:
    """Answers each detector call with the next given Boxes; `asked` records (captions, box and text thresholds)."""

    answers: list
    asked: list = field(default_factory=list)

    def fits(self, caption):
        return True

    def detect_captions(self, image, captions, box_threshold, text_threshold, phrase_rule="words"):
        self.asked.append((tuple(captions), box_threshold, text_threshold))
        return self.answers.pop(0)
