"""The ``layerscope_cloze`` task: next-words cloze items from the bundled public-domain texts (see README.md)."""
