"""Generation: SDXL base + optional refiner + LoRA, and the gallery of results."""
