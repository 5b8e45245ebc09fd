"""The package version, at the ground floor so that any layer can record it (ONNX exports,
index manifests) without importing the `vlkit` facade."""

__version__ = "0.1.0"
