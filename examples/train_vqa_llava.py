"""Train a small LLaVA-style VLM to answer easy-VQA questions, then ask it a few.

    .venv/bin/python examples/train_vqa_llava.py --vision runs/examples/clip/model --out runs/examples/llava

Expected (2-core CPU, 1 thread, 2026-11-27; the frozen `small-rn-64` CLIP image tower trained
by clip_zero_shot_and_retrieval.py, LLaVA's two stages: 100 connector-only steps then 300 full
steps of 64, 83 s in all): 0.62 M trainable parameters, 77 s of training, exact-match accuracy
0.927 on the first 1,000 test questions (the README's 1,500-step runs reach 0.98, and 0.9989
with two stages), and the six test questions printed at the end all answered right. Without `--vision` the
example first trains that CLIP with `vlkit.recipes.demo.run_demo` (~2 min more). `--quick`: a random
`small-rn-64` image tower, 20 steps of 16 and 32 test questions (~6 s); its answers are noise.

What `train_vlm` does (vlkit/recipes/vlm_run.py): builds a word-level tokenizer from the
training questions and answers, the LLaVA model (the CLIP tower's tokens -> an MLP projector ->
spliced at the `<image>` placeholders of a 2-layer Llama-style decoder), trains it with the
same `Trainer` as CLIP (loss on the answer tokens only), evaluates by greedy decoding, and
writes a run directory that `load_vlm_run` and `vlkit generate --model OUT` read back.
"""

import argparse
from pathlib import Path

import torch

from vlkit.data.datasets.vqa_text import EasyVQAQuestions
from vlkit.evaluation.generative import generate_answers
from vlkit.inference import load_vlm_run
from vlkit.recipes.demo import run_demo
from vlkit.recipes.vlm_run import VLMRecipe, train_vlm

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--vision", help="a vlkit CLIP checkpoint directory (default: train one)")
parser.add_argument("--out", default="runs/examples/llava")
parser.add_argument("--steps", type=int, default=300, help="steps of the main stage")
parser.add_argument("--connector-steps", type=int, default=100, help="LLaVA stage 1 steps")
parser.add_argument("--max-test", type=int, default=1000, help="test questions to score")
parser.add_argument("--quick", action="store_true", help="random tower, 20 steps")
args = parser.parse_args()
torch.set_num_threads(1)
out = Path(args.out)

# 1. The frozen image tower: a CLIP trained contrastively on the same images.
vision = args.vision
if vision is None and not args.quick:
    summary = run_demo(out / "clip", plots=False, progress=False, threads=1)
    print(f"trained the CLIP tower: zero-shot top-1 {summary['zero_shot_top1']:.3f}")
    vision = str(out / "clip" / "model")

# 2. One recipe names the whole run; train_vlm trains, evaluates and saves it.
recipe = VLMRecipe(
    kind="llava", task="easy_vqa", vision=vision or "", steps=args.steps,
    connector_only_steps=args.connector_steps, batch_size=64, max_test=args.max_test,
    device="cpu",
)  # fmt: skip
if args.quick:
    recipe = VLMRecipe(kind="llava", task="easy_vqa", steps=20,
                       batch_size=16, warmup_steps=2, max_test=32, device="cpu")  # fmt: skip
summary = train_vlm(recipe, out, overwrite=True)  # a rerun of this script replaces its run
print(f"{recipe.kind}: {summary['trainable_parameters'] / 1e6:.2f} M trainable of "
      f"{summary['total_parameters'] / 1e6:.2f} M parameters, "
      f"{summary['forward_gflops']:.3f} GFLOPs per sample forward")  # fmt: skip
print(f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s; "
      f"test accuracy {summary['accuracy']:.4f} on {summary['test_items']} questions")  # fmt: skip

# 3. Load the run directory back (safetensors + JSON only) and answer test questions.
run = load_vlm_run(out)
test = EasyVQAQuestions("test", run.transform, run.tokenizer, run.recipe.max_length)
indices = [0, 1, 2, 3, 4, 5]
images = torch.stack([test.load_image(i) for i in indices])  # (6, 3, S, S)
prompts = [test.prompt_ids(i) for i in indices]  # [sot] + question tokens
answers = generate_answers(run.model, images, prompts, run.tokenizer)
for i, answer in zip(indices, answers, strict=True):
    print(f"Q: {test.question(i):45} A: {answer:10} (truth: {test.answer(i)})")

# 4. Any image and any question in the training vocabulary: `run.answer` builds the prompt.
image = test.load_pil(test.samples[0][2])  # a PIL image; `vlkit.data.images.load_image(path)` too
for question in ("what shape is in the image?", "what color is the shape?"):
    print(f"free-text Q: {question:34} A: {run.answer(image, question)}")
