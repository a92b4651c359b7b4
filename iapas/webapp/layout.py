"""The Gradio page: a Segment tab and a Calibrate tab over `handlers`."""
from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..errors import IapasError
from ..methods import METHODS
from .handlers import ModelCache, SegmentRequest, calibrate_folder, segment_request

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples" / "images"
BOX_COLUMNS = ["phrase", "score", "x0", "y0", "x1", "y1", "mask area"]


def uploaded_image(**options):
    """A gr.Image that hands the handler the uploaded file itself, unconverted (16 bit, EXIF and the rest intact).

    Gradio's own preprocessing opens the upload with PIL first: a text file, an empty file or a forged
    400 MP header then fails inside Gradio with its generic error, and a 16-bit PNG comes back clipped
    to 8 bit. iapas's loader reads the file instead (`handlers.read_upload`), with the CLI's rules and
    messages. Pasted or webcam images (data URLs) keep Gradio's path. The instance's preprocess is
    replaced rather than subclassing gr.Image, whose metaclass would write a .pyi stub into this package.
    """
    import gradio as gr

    widget = gr.Image(type="filepath", **options)
    gradio_preprocess = widget.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return payload.path
        return gradio_preprocess(payload)

    widget.preprocess = preprocess
    return widget


RESULT_CACHE_BOUND_S = (600, 3600)  # Gradio's copies of result files: swept every 10 min, removed after an hour


def error_line(error: Exception) -> str:
    """The CLI's one-line message for a user's mistake."""
    return f"iapas: error: {error}"


def build_app(config: Config | None = None, cache: ModelCache | None = None, examples_dir: Path = EXAMPLES_DIR):
    """The Blocks app; `cache` keeps models loaded across requests (one per app)."""
    import gradio as gr

    cache = cache or ModelCache(config or Config())

    def on_segment(image, method, prompts, calibration_file, category, box, text, size, progress=gr.Progress()):
        request = SegmentRequest(method=method, prompts=prompts or "", category=category or "",
                                 calibration_path=_file_path(calibration_file),
                                 box_threshold=box, text_threshold=text, size_threshold=size)
        try:
            response = segment_request(cache, image, request, lambda fraction, message: progress(fraction, desc=message))
        except IapasError as error:
            return None, None, [], [], None, error_line(error)
        score = response.result.image_score
        status = f"{len(response.boxes_table)} boxes, image score {score:.3f}, {sum(t for _, t in response.timings_table):.0f} ms"
        return (response.overlay_file, response.heat_file, response.boxes_table, response.timings_table, response.files,
                status)  # files, not arrays: see SegmentResponse

    def on_calibrate(folder, category, n_images, progress=gr.Progress()):
        try:
            calibration, path = calibrate_folder(cache, folder, category or "", n_images,  # 0 is refused, not the default
                                                 lambda fraction, message: progress(fraction, desc=message))
        except IapasError as error:
            return None, None, error_line(error)
        summary = {"tags": list(calibration.tags), "p_final": list(calibration.p_final),
                   "size_threshold": calibration.size_threshold, "box_threshold": calibration.box_threshold,
                   "text_threshold": calibration.text_threshold, "kind": calibration.kind}
        return summary, path, f"calibrated {calibration.category or 'category'}: {len(calibration.p_final)} prompts"

    with gr.Blocks(title="iapas", delete_cache=RESULT_CACHE_BOUND_S) as app:
        gr.Markdown("# iapas: zero-shot industrial anomaly segmentation")
        with gr.Tab("Segment"):
            with gr.Row():
                with gr.Column():
                    image = uploaded_image(label="image", elem_id="input-image")
                    method = gr.Dropdown(METHODS.names(), value="iapas", label="method", elem_id="method")
                    prompts = gr.Textbox(label="prompts (comma-separated; IAP-AS)", placeholder="abnormal, defect, scratch")
                    calibration = gr.File(label="calibration file (IAP-AS)", file_types=[".json"])
                    category = gr.Textbox(label="category (CLIP methods)", placeholder="object")
                    box = gr.Slider(0, 1, value=cache.config.detection.box_threshold, step=0.01, label="box threshold")
                    text = gr.Slider(0, 1, value=cache.config.detection.text_threshold, step=0.01, label="text threshold")
                    size = gr.Slider(0, 1, value=cache.config.filtering.size_threshold, step=0.01, label="size threshold")
                    run = gr.Button("Segment", variant="primary", elem_id="segment-button")
                with gr.Column():
                    status = gr.Markdown(elem_id="status")
                    overlay = gr.Image(label="overlay", elem_id="overlay")
                    heat = gr.Image(label="anomaly map", elem_id="heatmap")
                    boxes = gr.Dataframe(headers=BOX_COLUMNS, label="boxes")
                    timings = gr.Dataframe(headers=["stage", "ms"], label="per-stage timings")
                    files = gr.File(label="result files", file_count="multiple")
            examples = sorted(str(p) for p in examples_dir.glob("*.png")) if examples_dir.is_dir() else []
            if examples:
                gr.Examples(examples=[[p] for p in examples], inputs=[image], label="examples")
            run.click(on_segment, [image, method, prompts, calibration, category, box, text, size],
                      [overlay, heat, boxes, timings, files, status], api_name="segment")
        with gr.Tab("Calibrate"):
            folder = gr.Textbox(label="folder of normal images (on the server)")
            calib_category = gr.Textbox(label="category", placeholder="screw")
            n_images = gr.Number(value=cache.config.calibration.n_images, precision=0, label="images drawn")
            calibrate = gr.Button("Calibrate", variant="primary")
            calib_status = gr.Markdown()
            calib_summary = gr.JSON(label="calibration")
            calib_file = gr.File(label="calibration file")
            calibrate.click(on_calibrate, [folder, calib_category, n_images], [calib_summary, calib_file, calib_status],
                            api_name="calibrate")
    return app


def _file_path(value) -> str:
    """The local path of a gr.File value (a path string or an object with .name), or ""."""
    if not value:
        return ""
    return str(getattr(value, "name", value))
