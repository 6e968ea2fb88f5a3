"""LoRA files: the export formats (diffusers, Kohya/A1111/ComfyUI), key spellings, and the
references users type (files, folders, Hub ids). Knows nothing of runs, jobs or the UI."""
