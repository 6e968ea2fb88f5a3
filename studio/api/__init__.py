"""The HTTP API served beside the UI: API keys (:mod:`studio.api.keys`), the request and response
schemas, JSON errors, the key dependency and the GPU gate, one router per area (``routes_*``),
and :func:`studio.api.server.create_api` assembling them. No Gradio import here."""
