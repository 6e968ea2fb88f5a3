"""The generation service: the operator's models and the one Generator that serves them.

Only the operator chooses the models (``--base``/``--refiner``/``--vae`` or their environment
variables, read once by the composition root). The UI and the HTTP API share this service, so
nothing a user sends (a browser session or an API call) can change the model another user's
generation runs on; a user chooses only the request (prompt, LoRA, sampler, sizes...).
"""

from __future__ import annotations

import threading

from studio.generate.engine import CancelledFn, GeneratedImage, Generator, ProgressFn
from studio.generate.request import GenerationRequest
from studio.models import model_source


class GenerationService:
    """Generation with one fixed set of models, loaded lazily and once per process."""

    def __init__(self, base: str | None = None, refiner: str | None = None,
                 vae: str | None = None):
        self.base = model_source("base", base)
        self.refiner = model_source("refiner", refiner)
        self.vae = vae or None
        self._generator: Generator | None = None
        self._lock = threading.Lock()

    def generator(self) -> Generator:
        """The one shared :class:`Generator` (made on first use; its pipelines load lazily)."""
        with self._lock:
            if self._generator is None:
                self._generator = Generator(self.base, self.refiner, self.vae)
            return self._generator

    def generate(self, req: GenerationRequest, progress: ProgressFn | None = None,
                 cancelled: CancelledFn | None = None) -> list[GeneratedImage]:
        """Validate ``req`` and generate its images (one sentence errors: GenerationError,
        ModelLoadError; GenerationCancelled when ``cancelled()`` turns true between steps)."""
        return self.generator().generate(req, progress, cancelled)
