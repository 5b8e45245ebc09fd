"""Benchmark datasets read from their standard on-disk layouts (nothing is downloaded).

* `classification`: ImageNet-1k val and its variants, CIFAR, STL-10, Food-101, Pets, Flowers-102,
  DTD, EuroSAT, MNIST, with CLIP_benchmark's class names and templates.
* `karpathy`: COCO 5k / Flickr30k 1k Karpathy test splits for image-text retrieval.
* `vqa_sets`, `mmvet`: the generative benchmarks.

A dataset that is not on disk raises `vlkit.errors.DatasetMissing`, one line naming the expected
layout and where to get it.
"""
