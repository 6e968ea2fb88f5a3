"""SDXL LoRA Studio: from a handful of photos to a personal SDXL LoRA and images.

All logic lives in this package; the Gradio UI (``studio.ui``) and the CLI (``studio.cli``)
are thin layers over it. Importing the package does no work: models load lazily.
"""

__version__ = "0.1.0"
