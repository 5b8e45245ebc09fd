"""Chameleon-style early fusion on easy-VQA: a VQ-VAE image tokenizer, then one decoder over
one vocabulary of words and image codes that both captions images and draws them from text.

    .venv/bin/python examples/chameleon_easy_vqa.py                 # full run, figures in docs/images
    .venv/bin/python examples/chameleon_easy_vqa.py --quick --out /tmp/chameleon   # seconds

1. `VQTokenizer` (vlkit/models/vq_tokenizer.py): 64x64 easy-VQA shapes -> 8x8 = 64 codes from a
   codebook of 128 (EMA codebook, k-means init on the first batch, dead-code restarts), trained
   on the 4,000 training images with pixel MSE + commitment loss. Reported on the 1,000 test
   images: reconstruction PSNR, code perplexity and the fraction of codes used.
2. `ChameleonLM` (vlkit/models/chameleon.py): a 3-layer Llama-style decoder over the word
   vocabulary + <boi>/<eoi> + the 128 codes, trained on both directions at once:
   "<bos> <boi> codes <eoi> a red circle <eos>" (captioning) and
   "<bos> a red circle <boi> codes <eoi>" (image generation), on the codes of the training
   images and of their mirror images.
3. Captions of the test images (greedy) -> exact-match accuracy against "a <colour> <shape>";
   images sampled from each of the 24 captions (the image span restricted to image codes),
   decoded by the tokenizer, and read back from their pixels (colour and shape, easy-VQA's
   labelling rule with tolerances for blurred edges) -> generation accuracy. The same readout of
   the original test images and of their reconstructions calibrates it.

Writes OUT/tokenizer and OUT/chameleon (safetensors + JSON config, OUT/chameleon/tokenizer.json
the word tokenizer) and FIGURES/chameleon_reconstructions.png and chameleon_generated.png
(FIGURES defaults to docs/images; OUT/figures with --quick). Refuses an existing OUT unless
--overwrite.

Measured, the default command (2-core CPU, 1 thread, shared with other jobs; 5.5-6.6 min wall, 4.0 min
CPU; 18 min when the machine was busier): test PSNR 25.41 dB, code perplexity 78.5 of 128, all
128 codes used; caption exact match 0.695 on the 1,000 test images; images sampled from the 24
captions (4 each) read back as the prompted colour and shape 0.406 (colour 0.854, shape 0.500),
where the same readout gives 0.988 on the originals and 0.697 on the reconstructions.
"""

import argparse
import math
import os
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from vlkit.data.datasets.easy_vqa import CLASS_NAMES, load_easy_vqa
from vlkit.data.datasets.easy_vqa_labels import PALETTE
from vlkit.data.tokenizers.word import WordTokenizer
from vlkit.hub.vq_checkpoint import save_chameleon, save_vq_tokenizer
from vlkit.layers.vector_quantizer import codebook_usage
from vlkit.models.chameleon import ChameleonConfig, ChameleonLM
from vlkit.models.vq_tokenizer import VQTokenizer, VQTokenizerConfig, psnr

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="runs/examples/chameleon")
parser.add_argument("--figures", default=None, help="default docs/images (OUT/figures: --quick)")
parser.add_argument("--tokenizer-steps", type=int, default=600)
parser.add_argument("--lm-steps", type=int, default=1000)
parser.add_argument("--batch-size", type=int, default=32, help="tokenizer batch")
parser.add_argument("--lm-batch-size", type=int, default=16, help="sequences per direction")
parser.add_argument("--samples-per-caption", type=int, default=4)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
parser.add_argument("--quick", action="store_true", help="tiny run: the pipeline, not the numbers")
args = parser.parse_args()
for flag in ("tokenizer_steps", "lm_steps", "batch_size", "lm_batch_size", "samples_per_caption"):
    if getattr(args, flag) < 1:
        parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
if args.quick:
    args.tokenizer_steps, args.lm_steps, args.samples_per_caption = 10, 10, 1
    args.batch_size, args.lm_batch_size = 8, 4
torch.set_num_threads(1)
torch.manual_seed(args.seed)
out = Path(args.out)
if out.exists() and any(out.iterdir()):
    if not args.overwrite:
        raise SystemExit(f"{out} exists and is not empty; pass --overwrite to replace it")
    shutil.rmtree(out)
figures = Path(args.figures or (out / "figures" if args.quick else "docs/images"))
figures.mkdir(parents=True, exist_ok=True)
start = time.perf_counter()


def load_pixels(examples) -> torch.Tensor:
    """easy-VQA PNGs -> (N, 3, 64, 64) float in [0, 1]."""
    arrays = [np.asarray(Image.open(e.path).convert("RGB")) for e in examples]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


train_examples, test_examples = load_easy_vqa("train"), load_easy_vqa("test")
if args.quick:
    train_examples, test_examples = train_examples[:64], test_examples[:24]
train_images, test_images = load_pixels(train_examples), load_pixels(test_examples)


def cosine_lr(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 50):
    """Linear warm-up, then cosine decay to 0.1 of the peak."""
    warmup = min(warmup, max(steps // 10, 1))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- 1. the VQ-VAE image tokenizer --------------------------------------------------------------
tokenizer = VQTokenizer(VQTokenizerConfig())
optimizer = torch.optim.Adam(tokenizer.parameters(), lr=2e-3)
schedule = cosine_lr(optimizer, args.tokenizer_steps)
generator = torch.Generator().manual_seed(args.seed)
bar = tqdm(range(args.tokenizer_steps), desc="VQ tokenizer", mininterval=5)
for step in bar:
    batch = train_images[torch.randint(len(train_images), (args.batch_size,), generator=generator)]
    result = tokenizer(batch)
    optimizer.zero_grad(set_to_none=True)
    result.losses["loss"].backward()
    optimizer.step()
    schedule.step()
    if step % 50 == 0:
        bar.set_postfix(
            mse=f"{result.losses['reconstruction']:.4f}", ppl=f"{result.perplexity:.1f}"
        )
last_mse = float(result.losses["reconstruction"].detach())
tokenizer.eval()
save_vq_tokenizer(tokenizer, out / "tokenizer")


def encode_all(images: torch.Tensor) -> torch.Tensor:
    return torch.cat([tokenizer.encode(chunk) for chunk in images.split(256)])


train_codes, test_codes = encode_all(train_images), encode_all(test_images)
# The decoder also trains on the codes of mirrored training images (a mirrored easy-VQA shape
# keeps its label): 8,000 code sequences instead of 4,000, against memorising them.
mirrored_codes = encode_all(train_images.flip(-1))
reconstructions = torch.cat([tokenizer.decode_codes(c) for c in test_codes.split(256)])
test_psnr = float(psnr(reconstructions, test_images).mean())
usage = codebook_usage(test_codes, tokenizer.config.num_codes)
print(f"VQ tokenizer: {args.tokenizer_steps} steps, final batch MSE {last_mse:.4f}")
print(
    f"test reconstruction PSNR {test_psnr:.2f} dB on {len(test_images)} images; "
    f"code perplexity {usage['perplexity']:.1f} of {tokenizer.config.num_codes}, "
    f"codes used {usage['used_fraction']:.3f}"
)

# Pixel readout of (generated or reconstructed) images. easy-VQA's own labeller
# (`easy_vqa_labels.pixel_label`) needs exact palette pixels and crisp edges, which decoded
# images lack, so this reads them the same way with tolerances: the background is the border's
# median; the colour is the palette colour most of the strongest non-background pixels are
# nearest to; the shape's mask is the pixels more than half-way from the background to that
# colour; a mask filling >= 0.9 of its bounding box is a rectangle, else one that is >= 0.7
# mirror-symmetric both ways is a circle, else a triangle. On the original test images it
# agrees with the labels (printed below).
PALETTE_RGB = torch.tensor(list(PALETTE.values()), dtype=torch.float32)  # (8, 3)


def read_label(image: torch.Tensor) -> str:
    pixels = image.permute(1, 2, 0) * 255  # (H, W, 3)
    border = torch.cat([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = border.median(0).values
    distance = (pixels - background).norm(dim=-1)  # (H, W)
    foreground = distance > 40
    if not foreground.any():
        return "(nothing)"
    strongest = pixels[foreground & (distance >= distance[foreground].median())]
    nearest = torch.cdist(strongest, PALETTE_RGB).argmin(1)
    index = int(torch.bincount(nearest, minlength=len(PALETTE)).argmax())
    colour = PALETTE_RGB[index] - background
    mask = (((pixels - background) @ colour) / colour.pow(2).sum() >= 0.5).numpy()
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return "(nothing)"
    box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    symmetry = min((box == box[::-1]).mean(), (box == box[:, ::-1]).mean())
    shape = "rectangle" if box.mean() >= 0.9 else "circle" if symmetry >= 0.7 else "triangle"
    return f"{list(PALETTE)[index]} {shape}"


truth = [e.class_name for e in test_examples]
originals = np.mean([read_label(x) == t for x, t in zip(test_images, truth, strict=True)])
readout = np.mean([read_label(r) == t for r, t in zip(reconstructions, truth, strict=True)])
print(f"pixel readout matches the label: originals {originals:.3f}, reconstructions {readout:.3f}")

# --- 2. one decoder over words + image codes ----------------------------------------------------
words = WordTokenizer.train(f"a {name}" for name in CLASS_NAMES)
caption_ids = {name: torch.tensor(words.encode(f"a {name}")) for name in CLASS_NAMES}
config = ChameleonConfig(
    text_vocab_size=words.vocab_size,
    num_image_codes=tokenizer.config.num_codes,
    tokens_per_image=tokenizer.config.tokens_per_image,
    bos_token_id=words.sot_token_id,
    eos_token_id=words.eot_token_id,
    pad_token_id=words.pad_token_id,
)
model = ChameleonLM(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
schedule = cosine_lr(optimizer, args.lm_steps)
bar = tqdm(range(args.lm_steps), desc="Chameleon LM", mininterval=5)
for step in bar:
    rows = torch.randint(len(train_examples), (args.lm_batch_size,), generator=generator).tolist()
    texts = [caption_ids[train_examples[i].class_name] for i in rows]
    mirror = torch.rand(len(rows), generator=generator) < 0.5
    batch_codes = [
        (mirrored_codes if m else train_codes)[i] for i, m in zip(rows, mirror, strict=True)
    ]
    captioning = model.collate(
        [model.caption_sequence(c, t) for c, t in zip(batch_codes, texts, strict=True)],
        config.pad_token_id,
    )
    drawing = model.collate(
        [model.generation_sequence(t, c) for c, t in zip(batch_codes, texts, strict=True)],
        config.pad_token_id,
    )
    # Each direction's loss is a mean over its own targets, so the 4 caption tokens are not
    # drowned by the 65 image tokens of the other direction.
    losses = {"caption": model(**captioning).loss, "image": model(**drawing).loss}
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    if step % 50 == 0:
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()})
print(
    f"Chameleon LM: {args.lm_steps} steps, vocabulary {config.vocab_size} "
    f"({config.text_vocab_size} words + <boi>/<eoi> + {config.num_image_codes} codes), "
    f"final caption loss {losses['caption'].item():.3f}, image loss {losses['image'].item():.3f}"
)
model.eval()
save_chameleon(model, out / "chameleon")
words.save(out / "chameleon")

# --- 3. image codes -> text, and text -> image codes -> pixels ----------------------------------
predicted = [
    words.decode(ids) for chunk in test_codes.split(128) for ids in model.generate_text(chunk, 6)
]
caption_accuracy = np.mean([p == f"a {t}" for p, t in zip(predicted, truth, strict=True)])
print(f"caption exact match {caption_accuracy:.3f} on {len(truth)} test images")
for p, t in list(zip(predicted, truth, strict=True))[:4]:
    print(f"  caption: {p!r} (truth: 'a {t}')")

sampler = torch.Generator().manual_seed(args.seed)
prompts = [name for name in CLASS_NAMES for _ in range(args.samples_per_caption)]
codes = model.generate_image_codes([caption_ids[n] for n in prompts], generator=sampler)
generated = tokenizer.decode_codes(codes)
labels = [read_label(image) for image in generated]
exact = np.mean([label == name for label, name in zip(labels, prompts, strict=True)])
colour = np.mean(
    [label.split()[0] == n.split()[0] for label, n in zip(labels, prompts, strict=True)]
)
shape = np.mean(
    [label.split()[-1] == n.split()[-1] for label, n in zip(labels, prompts, strict=True)]
)
print(
    f"text -> image: {len(prompts)} images sampled from the 24 captions; "
    f"pixel readout matches the caption {exact:.3f} (colour {colour:.3f}, shape {shape:.3f})"
)
self_captions = [words.decode(ids) for ids in model.generate_text(codes, 6)]
agree = np.mean([c == f"a {n}" for c, n in zip(self_captions, prompts, strict=True)])
print(f"the model's own captions of its generated images match the prompt: {agree:.3f}")

# --- figures ------------------------------------------------------------------------------------


def show(axis, image: torch.Tensor, title: str = "") -> None:
    axis.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    axis.set_title(title, fontsize=7)
    axis.axis("off")


def save_figure(fig, path: Path) -> None:
    """PNG written to a temporary name, then renamed: a reader never sees half a figure."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


n = min(12, len(test_images))
fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.6))
for i in range(n):
    show(axes[0, i], test_images[i], "original" if i == 0 else "")
    show(
        axes[1, i],
        reconstructions[i],
        f"{psnr(reconstructions[i : i + 1], test_images[i : i + 1]).item():.1f} dB",
    )
fig.suptitle(
    f"VQ tokenizer: 64x64 -> 8x8 codes of {tokenizer.config.num_codes}, test PSNR {test_psnr:.1f} dB",
    fontsize=9,
)
fig.tight_layout()
save_figure(fig, figures / "chameleon_reconstructions.png")
plt.close(fig)

shown = [CLASS_NAMES[3 * c + c % 3] for c in range(8)]  # each colour once, cycling the shapes
columns = min(args.samples_per_caption, 4)
fig, axes = plt.subplots(
    columns, len(shown), figsize=(1.2 * len(shown), 1.3 * columns + 0.4), squeeze=False
)
for j, name in enumerate(shown):
    picks = [i for i, p in enumerate(prompts) if p == name][:columns]
    for r, i in enumerate(picks):
        show(axes[r, j], generated[i], f"'a {name}'" if r == 0 else "")
fig.suptitle(
    "Images generated from text by the shared-vocabulary decoder (sampled codes -> VQ decoder)",
    fontsize=9,
)
fig.tight_layout()
save_figure(fig, figures / "chameleon_generated.png")
plt.close(fig)
print(
    f"figures: {figures / 'chameleon_reconstructions.png'}, {figures / 'chameleon_generated.png'}"
)
print(f"total {time.perf_counter() - start:.0f} s")
