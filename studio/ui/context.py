"""What every tab needs: the workspace and the model choices of this app instance."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from studio.lora.refs import run_loras
from studio.models import model_source
from studio.workspace import Workspace


@dataclass
class AppContext:
    workspace: Workspace
    base: str = field(default_factory=lambda: model_source("base"))
    refiner: str = field(default_factory=lambda: model_source("refiner"))
    captioner: str = field(default_factory=lambda: model_source("captioner"))
    vae: str | None = None
    demo: bool = False
    remote: bool = False  # served beyond localhost: hide error details
    notices: list[str] = field(default_factory=list)  # Markdown warnings shown above the tabs
    # Services made by the composition root (studio.compose); made on first use when absent.
    jobs: Any = None
    generation: Any = None

    def job_service(self):
        """The training-job service of this workspace (one per workspace and process)."""
        if self.jobs is None:
            from studio.jobs.service import get_service

            self.jobs = get_service(self.workspace, env=self.environment(), base=self.base)
        return self.jobs

    def generation_service(self):
        """The generation service with the operator's models."""
        if self.generation is None:
            from studio.generate.service import GenerationService

            self.generation = GenerationService(self.base, self.refiner, self.vae)
        return self.generation

    @property
    def demo_note(self) -> str:
        return ("**Demo mode**: the models are tiny and have random weights, so images are noise "
                "and captions are random words. Everything else works as with the real models.")

    def lora_choices(self) -> list[tuple[str, str]]:
        """(run name, its final LoRA file) of every run of the workspace with a LoRA, newest
        first: the Generate tab's LoRA list."""
        return [(name, str(path)) for name, path in run_loras(self.workspace).items()]

    def environment(self) -> dict[str, str]:
        """Environment for subprocesses started by the UI (same model choices)."""
        env = dict(os.environ)
        env["STUDIO_HOME"] = str(self.workspace.home)
        env["STUDIO_BASE_MODEL"] = self.base
        env["STUDIO_REFINER_MODEL"] = self.refiner
        env["STUDIO_CAPTION_MODEL"] = self.captioner
        if self.vae:
            env["STUDIO_VAE_MODEL"] = self.vae
        return env
