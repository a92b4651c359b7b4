"""The Gradio page: a Segment tab and a Calibrate tab over `handlers`."""
from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..errors import IapasError
from ..methods import METHODS
from .decisions import BATCH_COLUMNS, REGION_COLUMNS, decide_view, demo_banner, learned_checkpoints, segment_batch
from .handlers import ModelCache, SegmentRequest, calibrate_folder, read_upload, segment_request

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

    def on_segment(image, method, prompts, calibration_file, category, box, text, size, checkpoint=None,
                   checkpoint_file=None, progress=gr.Progress()):
        request = SegmentRequest(method=method, prompts=prompts or "", category=category or "",
                                 calibration_path=_file_path(calibration_file),
                                 box_threshold=box, text_threshold=text, size_threshold=size,
                                 checkpoint=_file_path(checkpoint_file) or checkpoint or "", name=_image_name(image))
        try:
            response = segment_request(cache, image, request, lambda fraction, message: progress(fraction, desc=message))
        except IapasError as error:
            return None, None, [], [], None, error_line(error), None
        score = response.result.image_score
        status = f"{len(response.boxes_table)} boxes, image score {score:.3f}, {sum(t for _, t in response.timings_table):.0f} ms"
        kept = (response.result, read_upload(cache, image), request.name)  # for re-deciding without segmenting again
        return (response.overlay_file, response.heat_file, response.boxes_table, response.timings_table, response.files,
                status, kept)  # files, not arrays: see SegmentResponse

    def on_decide(kept, threshold, min_area):
        """Decide the last segmented image at the slider's threshold (no new segmentation)."""
        if not kept:
            return "", None, None, [], None
        result, pixels, name = kept
        try:
            view = decide_view(result, pixels, threshold, float(min_area or 0), name)
        except (IapasError, ValueError) as error:
            return f"<b>{error_line(error)}</b>", None, None, [], None
        return view.verdict_html, view.picture, view.mask, view.regions_table, view.files

    def on_batch(paths, method, category, checkpoint, threshold, min_area, progress=gr.Progress()):
        request = SegmentRequest(method=method, category=category or "", checkpoint=checkpoint or "")
        try:
            rows, gallery, files = segment_batch(cache, [_file_path(p) for p in (paths or [])], request, threshold,
                                                 float(min_area or 0), lambda f, m: progress(f, desc=m))
        except (IapasError, ValueError) as error:
            return [], [], None, error_line(error)
        counts = {v: sum(row[1] == v for row in rows) for v in ("anomalous", "normal", "failed")}
        return rows, gallery, files, ", ".join(f"{n} {v}" for v, n in counts.items())

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

    checkpoints = learned_checkpoints(cache.config)
    with gr.Blocks(title="iapas", delete_cache=RESULT_CACHE_BOUND_S) as app:
        gr.Markdown("# iapas: zero-shot industrial anomaly segmentation")
        banner = demo_banner(cache.config, METHODS.names())
        gr.Markdown(banner, visible=bool(banner), elem_id="demo-banner")
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
                    checkpoint = gr.Dropdown(checkpoints, value=None, label="trained prompts (learned CLIP methods; weights folder)",
                                             allow_custom_value=False)
                    checkpoint_file = gr.File(label="or upload trained prompts (.pt / .pth)", file_types=[".pt", ".pth"])
                    run = gr.Button("Segment", variant="primary", elem_id="segment-button")
                    threshold = gr.Slider(0, 1, value=0.5, step=0.005, label="score threshold (image and pixel): above it is anomalous",
                                          elem_id="score-threshold")
                    min_area = gr.Number(value=0, label="minimum defect area (pixels, or a fraction below 1)")
                with gr.Column():
                    verdict = gr.HTML(elem_id="verdict-panel")
                    status = gr.Markdown(elem_id="status")
                    decided = gr.Image(label="decision: contours, regions, colour bar with the threshold", elem_id="decision")
                    mask = gr.Image(label="binary defect mask", elem_id="mask")
                    regions = gr.Dataframe(headers=REGION_COLUMNS, label="defect regions")
                    decision_files = gr.File(label="decision files", file_count="multiple")
                    overlay = gr.Image(label="overlay", elem_id="overlay")
                    heat = gr.Image(label="anomaly map", elem_id="heatmap")
                    boxes = gr.Dataframe(headers=BOX_COLUMNS, label="boxes")
                    timings = gr.Dataframe(headers=["stage", "ms"], label="per-stage timings")
                    files = gr.File(label="result files", file_count="multiple")
            examples = sorted(str(p) for p in examples_dir.glob("*.png")) if examples_dir.is_dir() else []
            if examples:
                gr.Examples(examples=[[p] for p in examples], inputs=[image], label="examples")
            kept = gr.State()
            decide_outputs = [verdict, decided, mask, regions, decision_files]
            run.click(on_segment, [image, method, prompts, calibration, category, box, text, size, checkpoint, checkpoint_file],
                      [overlay, heat, boxes, timings, files, status, kept], api_name="segment").then(
                on_decide, [kept, threshold, min_area], decide_outputs, api_name="decide")
            threshold.release(on_decide, [kept, threshold, min_area], decide_outputs, api_visibility="private")
            min_area.submit(on_decide, [kept, threshold, min_area], decide_outputs, api_visibility="private")
        with gr.Tab("Several images"):
            with gr.Row():
                with gr.Column():
                    batch_files = gr.File(label="images", file_count="multiple", file_types=["image"], elem_id="batch-files")
                    batch_method = gr.Dropdown(METHODS.names(), value="iapas", label="method")
                    batch_category = gr.Textbox(label="category (CLIP methods)", placeholder="object")
                    batch_checkpoint = gr.Dropdown(checkpoints, value=None, label="trained prompts (learned CLIP methods)")
                    batch_threshold = gr.Slider(0, 1, value=0.5, step=0.005, label="score threshold")
                    batch_area = gr.Number(value=0, label="minimum defect area")
                    batch_run = gr.Button("Segment all", variant="primary", elem_id="batch-button")
                with gr.Column():
                    batch_status = gr.Markdown(elem_id="batch-status")
                    batch_table = gr.Dataframe(headers=BATCH_COLUMNS, label="results", elem_id="batch-table")
                    batch_gallery = gr.Gallery(label="decisions", columns=3, elem_id="batch-gallery")
                    batch_downloads = gr.File(label="result files", file_count="multiple")
            batch_run.click(on_batch, [batch_files, batch_method, batch_category, batch_checkpoint, batch_threshold, batch_area],
                            [batch_table, batch_gallery, batch_downloads, batch_status], api_name="segment_many")
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


def _image_name(value) -> str:
    """The file name of an image input when the component hands over a path ("" for bare pixels)."""
    if isinstance(value, (str, Path)):
        return Path(value).name
    return str(getattr(value, "orig_name", "") or "")


def _file_path(value) -> str:
    """The local path of a gr.File value (a path string or an object with .name), or ""."""
    if not value:
        return ""
    return str(getattr(value, "name", value))
