"""The pipeline's stages as functions; ``pipeline/<stage>.py`` and the CLI call them."""
