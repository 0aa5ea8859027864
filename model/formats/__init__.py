"""The torch-free part of model/: experiment configs, checkpoint manifests, dataset archive
rules and image decoding.  The API process validates uploads and requests with these, so
nothing under model.formats imports torch (an import-linter contract in pyproject.toml)."""
