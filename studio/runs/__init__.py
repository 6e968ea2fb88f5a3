"""The run folder: the only code that knows its layout (see :mod:`studio.runs.folder`)."""
