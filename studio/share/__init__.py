"""Sharing: push runs and datasets to the Hugging Face Hub, export run bundles (no Gradio here)."""
