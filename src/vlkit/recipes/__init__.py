"""The application's jobs: the demo, a CLIP training run, a VLM training run."""

from vlkit.recipes.clip_run import train
from vlkit.recipes.demo import run_demo
from vlkit.recipes.vlm_run import VLMRecipe, evaluate_vlm, load_vlm_run, train_vlm

__all__ = ["VLMRecipe", "evaluate_vlm", "load_vlm_run", "run_demo", "train", "train_vlm"]
