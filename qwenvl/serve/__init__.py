"""OpenAI-compatible HTTP server (`qwenvl serve`): FastAPI app, request schema, safe media, continuous batching.

    from qwenvl.serve import ServeConfig, create_app
    app = create_app(vlm, ServeConfig(api_key="sk-local"))   # then uvicorn.run(app, ...)

Modules: `config` (flags), `errors` (OpenAI error bodies), `schema` (request -> sampling/messages), `media` and
`fetch` (what a request may read or reach), `engine` (one thread owns the model; continuous batching),
`responses` (completion objects, SSE chunks, tool calls, the structured extension), `app` (routes), `page.html`.
"""
from .config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def create_app(vlm, config: ServeConfig | None = None):
    """The FastAPI application serving `vlm` (imports FastAPI lazily: `pip install qwenvl[serve]`)."""
    from .app import create_app as _create

    return _create(vlm, config or ServeConfig())
