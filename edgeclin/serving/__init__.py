"""``edgeclin serve``: an HTTP service for bundles, torch-free (onnxruntime, tokenizers, FastAPI, uvicorn).

    from edgeclin.serving import ServeConfig, serve
    serve(["export/lora", "ner=export/ncbi"], ServeConfig(port=8080))   # until SIGTERM/SIGINT

- ``config``: the options and their checks; ``registry``: the loaded models; ``batching``: the
  per-model micro-batcher; ``protocol``: the v1 and v2 wire formats; ``auth``: bearer tokens;
  ``metrics``: Prometheus; ``app``: the FastAPI routes; ``server``: uvicorn, the socket, signals.

Needs the ``serve`` extra (``pip install 'edgeclin[serve]'``); ``ServeConfig`` does not.
"""

from __future__ import annotations

from edgeclin.errors import EdgeclinError
from edgeclin.serving.config import ServeConfig, bundle_specs

SERVE_EXTRAS = ("fastapi", "uvicorn", "prometheus_client")


def serve(bundles: list[str], config: ServeConfig) -> None:
    """Serve the bundles (paths or NAME=PATH) until SIGTERM or SIGINT, then return once drained."""
    try:
        from edgeclin.serving.server import serve as run
    except ImportError as exc:
        if exc.name not in SERVE_EXTRAS:
            raise
        raise EdgeclinError(f"edgeclin serve needs {exc.name}: pip install 'edgeclin[serve]'") from None
    run(bundles, config)


__all__ = ["ServeConfig", "bundle_specs", "serve"]
