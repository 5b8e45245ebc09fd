"""Caption tokenization throughput: vlkit's CLIPTokenizer vs open_clip's SimpleTokenizer.

Generates `--n` distinct synthetic captions from a seeded template generator (words, numbers,
punctuation, some capitals, a few non-ASCII words and HTML entities so that both the ftfy path
and the ASCII fast path are exercised), tokenizes them with both implementations, checks that
the tensors are identical and prints a table.

    .venv/bin/python benchmarks/tokenizer_throughput.py --n 100000
"""

from __future__ import annotations

import argparse
import os
import random
import time

import torch

ADJECTIVES = ("red", "green", "blue", "small", "large", "old", "young", "happy", "wooden",
              "shiny", "furry", "tall", "tiny", "striped", "rusty", "golden")  # fmt: skip
NOUNS = ("cat", "dog", "car", "house", "tree", "bird", "boat", "horse", "bicycle", "chair",
         "laptop", "pizza", "clock", "train", "umbrella", "giraffe")  # fmt: skip
PLACES = ("beach", "table", "street", "grass", "sofa", "roof", "mountain", "kitchen", "river",
          "field", "bridge", "shelf")  # fmt: skip
VERBS = ("sitting", "standing", "sleeping", "running", "parked", "lying", "waiting", "resting")
# Made-up names give a long tail of distinct words, as real caption data has.
SYLLABLES = ("ka", "lo", "mi", "ren", "to", "sha", "vel", "qui", "dor", "ne", "bax", "ul")
TEMPLATES = (
    "a photo of a {adj} {noun} on the {place}",
    "A {adj} {noun} {verb} near the {place}.",
    "{num} {adj} {noun}s {verb} on a {place}",
    "There's a {noun} in the {place}, and it's {adj}!",
    "close-up: the {adj} {noun} ({num} cm) by the {place}",
    "{Noun} #{num} {verb} next to a {adj} {place}?",
    "a {adj} {noun} & a {noun2} at the {place}",
    "a photo of a {adj} {noun} in the {place} -- taken in {year}",
    "{name} the {noun}, {verb} in {name2}'s {place}",
)
# A few captions with non-ASCII text and entities (the ftfy path), as in web-scraped data.
EXTRAS = ("café", "naïve", "crème brûlée", "東京", "😀", "&amp;", "fiancé", "Zürich")


def _name(rng: random.Random) -> str:
    return "".join(rng.choices(SYLLABLES, k=rng.randint(2, 4)))


def make_captions(n: int, seed: int = 0) -> list[str]:
    """`n` synthetic captions from a seeded generator; nearly all distinct."""
    rng = random.Random(seed)
    captions = []
    for _ in range(n):
        noun = rng.choice(NOUNS)
        text = rng.choice(TEMPLATES).format(
            adj=rng.choice(ADJECTIVES),
            noun=noun,
            Noun=noun.capitalize(),
            noun2=rng.choice(NOUNS),
            place=rng.choice(PLACES),
            verb=rng.choice(VERBS),
            num=rng.randint(0, 99999),
            year=rng.randint(1900, 2025),
            name=_name(rng).capitalize(),
            name2=_name(rng),
        )
        if rng.random() < 0.1:
            text += " " + rng.choice(EXTRAS)
        captions.append(text)
    return captions


def _time(fn, captions: list[str]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn(captions)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of captions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    import open_clip

    # open_clip/tokenizer.py sets TOKENIZERS_PARALLELISM=false at import; restore the caller's
    # setting so vlkit's encode_batch runs as it would without open_clip imported.
    if parallelism is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = parallelism

    from vlkit.data.tokenizers import CLIPTokenizer

    captions = make_captions(args.n, args.seed)
    print(f"{len(captions):,} captions, {len(set(captions)):,} distinct, {os.cpu_count()} CPUs")

    ref_tok = open_clip.get_tokenizer("ViT-B-32")
    start = time.perf_counter()
    words_tok = CLIPTokenizer(batch_mode="words")
    build_s = time.perf_counter() - start
    pipeline_tok = CLIPTokenizer(batch_mode="pipeline")
    _ = pipeline_tok.backend_tokenizer  # build the Rust pipeline outside the timed region

    rows = []
    ref_s, ref = _time(ref_tok, captions)
    rows.append(("open_clip SimpleTokenizer", ref_s))
    for name, tok in (
        ("vlkit CLIPTokenizer (words)", words_tok),
        ("vlkit CLIPTokenizer (pipeline)", pipeline_tok),
    ):
        seconds, ours = _time(tok, captions)
        if not torch.equal(ours, ref):
            bad = (ours != ref).any(dim=1).nonzero().flatten().tolist()
            raise SystemExit(f"{name}: MISMATCH on {len(bad)} captions, e.g. {captions[bad[0]]!r}")
        rows.append((name, seconds))
    print("identical tensors:", tuple(ref.shape))

    print(f"\n{'implementation':<32}{'seconds':>9}{'captions/s':>13}{'ratio':>8}")
    for name, seconds in rows:
        print(f"{name:<32}{seconds:>9.3f}{len(captions) / seconds:>13,.0f}{ref_s / seconds:>7.1f}x")
    print(f"\n(CLIPTokenizer construction {build_s:.2f} s, not timed; ratio = open_clip s / s)")


if __name__ == "__main__":
    main()
