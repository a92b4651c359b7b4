"""`iapas serve`: a Gradio web app over the same Python API as the CLI.

Two tabs: *Segment* (an uploaded or example image, a method, prompts or a calibration file,
thresholds -> overlay, heat map, labelled boxes, per-stage timings and the result files) and
*Calibrate* (a folder of normal images -> a calibration file). Models load once per setting and
stay loaded (`ModelCache`); a user's mistake shows the CLI's one-line message.
"""
from .handlers import ModelCache, SegmentRequest, calibrate_folder, segment_request

__all__ = ["ModelCache", "SegmentRequest", "calibrate_folder", "segment_request", "build_app"]


def build_app(*args, **kwargs):
    """The Gradio Blocks app (imported lazily: gradio is heavy)."""
    from .layout import build_app as build

    return build(*args, **kwargs)
