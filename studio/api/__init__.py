"""The HTTP API served beside the UI: API keys (:mod:`studio.api.keys`) and the FastAPI routes
(:mod:`studio.api.server`). No Gradio import here."""
