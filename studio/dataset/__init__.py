"""Dataset preparation and the dataset folder.

ingest (validation, EXIF, colour) -> faces (detectors) -> crop (alignment, square crops) ->
captioners (the Captioner registry; blip) + caption (template, lint, bulk edits) -> quality
report -> store, the one module that reads and writes a prepared dataset folder (its hash, its
list). sources reads any dataset training is pointed at (prepared ones through store).

Nothing here imports Gradio; the CLI (``python -m studio prepare``) and the Dataset tab both call
:func:`studio.dataset.pipeline.prepare_dataset` and :mod:`studio.dataset.store`.
"""

from studio.errors import StudioError


class DatasetError(StudioError, ValueError):
    """A user-facing dataset problem; ``str(err)`` is one sentence saying what to do."""
