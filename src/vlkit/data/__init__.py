"""Data: tokenizers, image transforms, datasets."""
