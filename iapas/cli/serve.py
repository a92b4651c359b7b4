"""`iapas serve`: the Gradio web app (Segment and Calibrate tabs) on a local port."""
from __future__ import annotations

import argparse
import os
import sys

from .common import EXIT_OK, add_model_options, base_config


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `iapas serve`."""
    serve = commands.add_parser("serve", help="web app: segment images and calibrate categories in a browser")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    serve.add_argument("--clip", dest="clip_weights", help="CLIP directory or open_clip file for the CLIP methods")
    add_model_options(serve)
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build the app and serve it until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: iapas runs offline
    from ..webapp import ModelCache, build_app

    cache = ModelCache(base_config(args))
    app = build_app(cache=cache)
    print(f"iapas serve: http://{args.host}:{args.port}  (Ctrl-C stops)", file=sys.stderr)
    try:  # show_error: an unexpected failure reaches the page as its message, not Gradio's bare "Error"
        app.queue().launch(server_name=args.host, server_port=args.port, show_error=True, quiet=True)
    finally:
        cache.results.clear()
    return EXIT_OK
