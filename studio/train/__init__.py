"""SDXL DreamBooth LoRA training: config -> loop -> run folder (no Gradio import here)."""
