"""Dataset preparation: ingest (validation, EXIF, colour), faces (detect, align, crop), BLIP
captions, quality report and the on-disk dataset (imagefolder + metadata.jsonl).

Nothing here imports Gradio; the CLI (``python -m studio prepare``) and the Dataset tab both call
:func:`studio.dataset.pipeline.prepare_dataset` and :mod:`studio.dataset.store`.
"""

from studio.errors import StudioError


class DatasetError(StudioError, ValueError):
    """A user-facing dataset problem; ``str(err)`` is one sentence saying what to do."""
