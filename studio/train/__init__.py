"""SDXL DreamBooth LoRA training: config -> loop -> run folder (no Gradio import here).

loop.py (the Trainer and ``train()``), sdxl.py (models, LoRA layers, prompt encoding, time ids,
the LoRA file, the sampling pipeline), loss.py, optimizers.py (name -> builder), caches.py,
data.py (prompts, transforms, sampler, class images), state.py (checkpoint save and resume),
callbacks.py, sampling.py (validation images), runtime.py (accelerate, trackers), errors.py,
cli.py (``python -m studio train``), compare.py (checkpoint comparison and export).
"""
