"""Checkpoint load time: `vlkit.from_pretrained` vs the references, side by side in one run.

    python benchmarks/load_time.py [--rounds 3] [--models clip,smolvlm]

clip: an open_clip ViT-B/32 (random init, open_clip_config.json + safetensors) loaded by
vlkit and by `open_clip.create_model_and_transforms(..., pretrained=FILE)`. smolvlm: a random
SmolVLM-256M-shaped checkpoint written by transformers, loaded by vlkit and by
`SmolVLMForConditionalGeneration.from_pretrained`. vlkit is also timed with its random
initialisation put back (`skip_weight_init` replaced by a no-op), which is what it did before:
the draws are the work that the load overwrites. Every load is checked to give the same
weights (exit status 1 otherwise). Best of `--rounds`, each loader in turn, in this process
(file cache warm after the first round).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402
from vlm_generate import IMAGE_TOKEN, SCALE_FACTOR, model_shape  # noqa: E402

import vlkit  # noqa: E402
import vlkit.hub.hf_causal_lm  # noqa: E402, F401  (every loader module, for draw_init)
import vlkit.hub.hf_llava  # noqa: E402, F401
import vlkit.hub.hf_opt  # noqa: E402, F401
import vlkit.hub.hf_smolvlm  # noqa: E402, F401
import vlkit.hub.loading  # noqa: E402, F401
from vlkit.hub import weights as hub_weights  # noqa: E402


def _clip_checkpoint(root: Path) -> tuple[Path, Callable[[], torch.nn.Module]]:
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = open_clip.get_model_config("ViT-B-32")
    model = open_clip.model.CLIP(**cfg).eval()
    directory = root / "clip"
    directory.mkdir()
    weights = directory / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))

    def reference():
        return open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(weights))[0]

    return directory, reference


def _smolvlm_checkpoint(root: Path) -> tuple[Path, Callable[[], torch.nn.Module]]:
    import transformers

    shape = model_shape(small=False)
    config = transformers.SmolVLMConfig(
        vision_config=dict(shape["vision"]), text_config=dict(shape["text"]),
        scale_factor=SCALE_FACTOR, image_token_id=IMAGE_TOKEN, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    directory = root / "smolvlm"
    transformers.SmolVLMForConditionalGeneration(config).save_pretrained(directory)

    def reference():
        return transformers.SmolVLMForConditionalGeneration.from_pretrained(directory)

    return directory, reference


def _weight_sum(model: torch.nn.Module) -> tuple[float, float, int]:
    """(sum, sum of squares, count) of the distinct parameters, in float64: equal loads agree
    to rounding whatever the parameter names (tied weights counted once in both libraries)."""
    params = {p.data_ptr(): p.detach().double() for p in model.parameters()}.values()
    return (float(sum(p.sum() for p in params)), float(sum((p * p).sum() for p in params)),
            sum(p.numel() for p in params))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="clip,smolvlm")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="load_time_"))
    builders = {"clip": _clip_checkpoint, "smolvlm": _smolvlm_checkpoint}
    reference_name = {"clip": "open_clip", "smolvlm": "transformers"}
    skipping = hub_weights.skip_weight_init
    loaders = [m for m in list(sys.modules.values())
               if getattr(m, "__name__", "").startswith("vlkit.hub.") and m is not hub_weights
               and getattr(m, "skip_weight_init", None) is skipping]  # fmt: skip

    def draw_init(enabled: bool) -> None:
        for module in loaders:
            module.skip_weight_init = contextlib.nullcontext if enabled else skipping

    lines = [
        f"`python benchmarks/load_time.py --rounds {args.rounds}`; {cpu_name()}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads.",
        "",
        "| checkpoint | vlkit s | vlkit with random init s | reference s | vs reference |",
        "|---|---:|---:|---:|---:|",
    ]
    same = True
    for name in args.models.split(","):
        directory, reference = builders[name](root)
        times: dict[str, list[float]] = {"vlkit": [], "vlkit+init": [], "reference": []}
        sums = {}
        for _ in range(args.rounds):
            for loader in times:
                draw_init(loader == "vlkit+init")  # what vlkit did before: draw, then overwrite
                start = time.perf_counter()
                model = reference() if loader == "reference" else vlkit.from_pretrained(directory)
                times[loader].append(time.perf_counter() - start)
                draw_init(False)
                sums[loader] = _weight_sum(model)
                del model
        first = next(iter(sums.values()))
        same &= all(
            count == first[2] and abs(total - first[0]) <= 1e-9 * max(1.0, abs(first[1]))
            and abs(squares - first[1]) <= 1e-9 * first[1]
            for total, squares, count in sums.values()
        )  # fmt: skip
        best = {k: min(v) for k, v in times.items()}
        lines.append(f"| {name} ({reference_name[name]}) | {best['vlkit']:.2f} | "
                     f"{best['vlkit+init']:.2f} | {best['reference']:.2f} | "
                     f"{best['reference'] / best['vlkit']:.2f}x |")  # fmt: skip
    lines += ["", f"Same weights in every load: {'yes' if same else 'NO'}."]
    print("\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
