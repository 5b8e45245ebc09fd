"""A real training run of a composed VLM: a pretrained CLIP tower + a pretrained Llama LM.

Issue 12 item 5. The run is the course's recipe at CPU scale:

1. Text: easy-VQA questions written as LLaVA conversation JSON
   (`vlkit.data.datasets.llava_conversations`), and the synthetic-scene captions.
2. Language model: a byte-level BPE `tokenizer.json` trained on that text with the `tokenizers`
   library, given a ChatML chat template (SmolLM2's `<|im_start|>role ... <|im_end|>`, without
   its system line), and a tiny `LlamaForCausalLM` pretrained on the chat-rendered questions
   and answers and the captions (vlkit's `DecoderLM` in the one `Trainer`, saved in the
   transformers layout with `save_pretrained`): a real pretrained LM directory.
3. Composition: the `make demo` CLIP tower (frozen) + that LM, for `kind` "llava" (LLaVA's two
   stages, Liu et al. 2023 Sec. 4.2: projector only, then projector + LM), "qformer" (BLIP-2
   stage 2: Q-Former + projection, LM frozen) or "flamingo" (Perceiver + gated cross-attention,
   LM frozen), trained with `ConversationLMTask` on the conversation JSON through the LM's own
   chat template, labels on the assistant tokens only.
4. Evaluation: greedy answers to the chat-rendered test questions, easy-VQA exact match.

`run_composed(ComposedRunConfig(...), out_dir)` does it all and returns (and writes) a summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vlkit.data.datasets.image_text import parse_key
from vlkit.data.datasets.llava_conversations import (
    LlavaConversations,
    collate_conversations,
    easy_vqa_conversations,
    write_llava_conversations,
)
from vlkit.data.transforms import ImageTransform
from vlkit.evaluation.generative import generate_answers
from vlkit.evaluation.vqa import exact_match_accuracy
from vlkit.losses.next_token import IGNORE_INDEX
from vlkit.training.callbacks import JsonlLogger, ProgressBar
from vlkit.training.config import OptimConfig, TrainConfig
from vlkit.training.flops import flops_per_sample
from vlkit.training.trainer import Trainer
from vlkit.training.vlm_task import ConversationLMTask, TextLMTask

__all__ = [
    "CHAT_TEMPLATE",
    "COMPOSED_KINDS",
    "ComposedRunConfig",
    "SPECIAL_TOKENS",
    "conversation_accuracy",
    "full_run_config",
    "pretrain_lm",
    "run_composed",
    "train_bpe_tokenizer",
]

COMPOSED_KINDS = ("llava", "qformer", "flamingo")
# ChatML as SmolLM2-Instruct's template writes it (HuggingFaceTB/SmolLM2-135M-Instruct
# tokenizer_config.json), without the default system message: shorter rows on a CPU.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>")


@dataclass
class ComposedRunConfig:
    """One composed training run.

    Attributes:
        kind: One of `COMPOSED_KINDS`.
        vision: A vlkit CLIP checkpoint directory (the `make demo` tower: `runs/demo/model`).
        vision_tokens: Which tokens of a ResNet tower the connector reads (`compose_vlm`'s
            `vision_feature_layer`: "final", the demo tower's 2x2 grid, or "layer3"). A ViT
            tower gets each kind's default (LLaVA: the penultimate layer, CLS dropped).
        language: A pretrained causal-LM directory; "" = train one into `OUT/lm`.
        lm_steps, lm_batch_size, lm_width, lm_layers, lm_heads, vocab_size: That LM's pretraining.
        connector_steps: LLaVA stage 1 (projector only); 0 for the frozen-LM kinds.
        steps: The main stage (llava: projector + LM; qformer / flamingo: LM frozen).
        batch_size, lr: The VLM stages' batch and peak learning rate.
        num_queries: Q-Former queries / Perceiver latents.
        train_questions: Use only the first N training questions (None: all 38,575).
        max_test: Score the first N test questions.
        threads: torch threads (None: leave as is).
        init_from: A `Trainer` checkpoint directory of the same composition (its
            `model.safetensors`) to continue from, e.g. `OUT/stage2/checkpoints/step_00001200`.
    """

    kind: str = "llava"
    vision: str = "runs/demo/model"
    vision_tokens: str = "final"
    language: str = ""
    lm_steps: int = 300
    lm_batch_size: int = 64
    lm_width: int = 128
    lm_layers: int = 2
    lm_heads: int = 4
    vocab_size: int = 800
    connector_steps: int = 100
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    num_queries: int = 8
    train_questions: int | None = None
    max_test: int | None = 1000
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    init_from: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in COMPOSED_KINDS:
            raise ValueError(f"kind must be one of {COMPOSED_KINDS}, got {self.kind!r}")


def full_run_config(
    kind: str, vision: str, language: str = "", **overrides: Any
) -> ComposedRunConfig:
    """The measured run of `kind` (benchmarks/RESULTS.md, the example's default): a 400-step
    pretraining of a 4-layer LM (unless `language`), the ResNet tower's layer3 tokens, then the
    same 4,000 steps of 64 for every kind: LLaVA 200 projector-only + 3,800 projector + LM
    steps, qformer / flamingo 4,000 connector steps with the LM frozen; peak lr 2e-3, cosine to
    1e-4; all 9,673 test questions. `overrides` replace any of these (the comparison rows used
    `lm_layers=2, vision_tokens="final"`)."""
    stage1, steps = (200, 3800) if kind == "llava" else (0, 4000)
    settings: dict[str, Any] = dict(kind=kind, vision=vision, language=language, lm_steps=400,
                                    lm_layers=4, vision_tokens="layer3", connector_steps=stage1,
                                    steps=steps, max_test=None)  # fmt: skip
    return ComposedRunConfig(**{**settings, **overrides})


def corpus_texts(train_questions: int | None = None) -> list[str]:
    """The LM's text: chat-rendered easy-VQA training questions and answers, and scene captions."""
    from vlkit.data.datasets.scenes_text import scene_corpus

    rows = easy_vqa_conversations("train", train_questions)
    chats = [
        f"<|im_start|>user\n{r['conversations'][0]['value']}<|im_end|>\n"
        f"<|im_start|>assistant\n{r['conversations'][1]['value']}<|im_end|>\n"
        for r in rows
    ]
    return chats + list(scene_corpus())


def train_bpe_tokenizer(texts: list[str], directory: str | Path, vocab_size: int = 800) -> Path:
    """Trains a byte-level BPE `tokenizer.json` (GPT-2 / SmolLM2 style) and writes it with a
    `tokenizer_config.json` naming its special tokens and chat template; returns the directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<image>"],
        "model_max_length": 512,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


class _TextRows(torch.utils.data.Dataset):
    """Token rows for LM pretraining (every token a target)."""

    def __init__(self, rows: list[list[int]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, _ = parse_key(key, len(self.rows))  # the Trainer's sampler passes (index, seed)
        ids = torch.tensor(self.rows[index], dtype=torch.long)
        return {"input_ids": ids, "labels": ids.clone()}


def _collate_text(samples: list[dict], pad_token_id: int) -> dict[str, Any]:
    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, s in enumerate(samples):
        ids[row, : len(s["input_ids"])] = s["input_ids"]
        labels[row, : len(s["labels"])] = s["labels"]
    # `images` only carries the batch size the Trainer counts.
    return {"input_ids": ids, "labels": labels, "images": torch.zeros(len(samples), 0)}


def _train_config(
    steps: int, batch: int, lr: float, cfg: ComposedRunConfig, out: Path
) -> TrainConfig:
    optim = OptimConfig(batch_size=batch, max_steps=steps, lr=lr, warmup_steps=min(30, steps // 5),
                        min_lr_ratio=0.05, weight_decay=0.0)  # fmt: skip
    return TrainConfig(optim=optim, seed=cfg.seed, device=cfg.device, out_dir=str(out),
                       progress=False, log_every=10)  # fmt: skip


def pretrain_lm(cfg: ComposedRunConfig, directory: str | Path) -> dict[str, Any]:
    """Trains the BPE tokenizer and a tiny Llama on `corpus_texts`; saves both in `directory`
    (a transformers `LlamaForCausalLM` directory). Returns {"first_loss", "last_loss", ...}."""
    import vlkit.hub  # noqa: F401  (registers DecoderLM.save_pretrained)
    from vlkit.data.tokenizers.hf_json import HFTokenizer
    from vlkit.models.decoder import DecoderConfig, DecoderLM

    directory = Path(directory)
    texts = corpus_texts(cfg.train_questions)
    train_bpe_tokenizer(texts, directory, cfg.vocab_size)
    tokenizer = HFTokenizer.from_pretrained(str(directory))
    rows = [tokenizer.encode(t)[:128] for t in texts]
    config = DecoderConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=cfg.lm_width,
        intermediate_size=4 * cfg.lm_width, num_layers=cfg.lm_layers, num_heads=cfg.lm_heads,
        num_kv_heads=cfg.lm_heads, max_position_embeddings=512, tie_word_embeddings=False,
        eos_token_id=tokenizer.eot_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    lm = DecoderLM(config)
    losses: list[float] = []

    class _Record:
        def on_step_end(self, trainer: Any, metrics: dict[str, float]) -> None:
            if "loss" in metrics:
                losses.append(float(metrics["loss"]))

    train_config = _train_config(cfg.lm_steps, cfg.lm_batch_size, 3e-3, cfg, directory / "run")
    summary = Trainer(train_config, lm, TextLMTask(), _TextRows(rows),
                      lambda s: _collate_text(s, tokenizer.pad_token_id),
                      [_Record(), ProgressBar("LM pretraining")]).fit()  # fmt: skip
    lm.save_pretrained(directory)
    return {"first_loss": losses[0], "last_loss": losses[-1], "steps": len(losses),
            "train_seconds": float(summary["train_seconds"]),
            "parameters": sum(p.numel() for p in lm.parameters())}  # fmt: skip


def _compose(cfg: ComposedRunConfig, language: Path) -> tuple[nn.Module, Any, Any]:
    """(model, tokenizer, image transform): `vlkit.compose_vlm` of the CLIP tower (frozen) and
    the pretrained LM (frozen too until LLaVA's stage 2), joined by `cfg.kind`'s connector.

    A ViT tower gives each kind's default tokens (LLaVA: the penultimate layer, CLS dropped); the
    `make demo` ResNet tower gives `cfg.vision_tokens` ("final": its 2x2 grid). The model carries
    its parts record (`model.composition`), which `save_pretrained` writes.
    """
    from vlkit.hub import from_pretrained
    from vlkit.hub.compose import compose_vlm
    from vlkit.models.vit import VisionTransformer

    clip = from_pretrained(cfg.vision)
    transform = ImageTransform(clip.config.preprocess, train=False)
    resnet = not isinstance(clip.vision, VisionTransformer)
    model = compose_vlm(
        clip, str(language), cfg.kind, num_queries=cfg.num_queries, seed=cfg.seed,
        vision_feature_layer=cfg.vision_tokens if resnet else None,
    )  # fmt: skip
    # compose_vlm saw a CLIP object: name the directory it came from in the parts record.
    model.composition["vision"] = str(cfg.vision)
    set_language_trainable(model, cfg.kind, False)
    return model, model.tokenizer, transform


def set_language_trainable(model: nn.Module, kind: str, trainable: bool) -> None:
    """Freezes or unfreezes the LM's own weights; the connector (and Flamingo's gated
    cross-attention) always train, the vision tower never. The parts record follows."""
    from vlkit.models.composition import refresh_composition, set_trainable

    parts = ["connector"] + (["cross_attention"] if kind == "flamingo" else [])
    set_trainable(model, kind, parts + (["language"] if trainable else []))
    refresh_composition(model, kind)


@torch.no_grad()
def conversation_accuracy(
    model: nn.Module, data: LlavaConversations, max_items: int | None = None, batch_size: int = 128
) -> tuple[float, list[str]]:
    """Easy-VQA exact match of greedy answers to the chat-rendered prompts (placeholders
    included, so `generate_answers` adds none). Returns (accuracy, predictions)."""
    indices = list(range(len(data) if max_items is None else min(max_items, len(data))))
    was_training = model.training
    model.eval()
    predictions: list[str] = []
    try:
        starts = range(0, len(indices), batch_size)
        for start in tqdm(starts, desc="easy-VQA test", unit="batch", dynamic_ncols=True):
            chunk = indices[start : start + batch_size]
            images = torch.stack([data.load_image(i) for i in chunk])  # (b, 3, S, S)
            prompts = [data.prompt_ids(i) for i in chunk]
            predictions += generate_answers(model, images, prompts, data.tokenizer,
                                            max_new_tokens=6, image_tokens=0)  # fmt: skip
    finally:
        model.train(was_training)
    answers = [data.answer(i) for i in indices]
    return exact_match_accuracy([p.strip() for p in predictions], answers), predictions


def _fit(
    cfg: ComposedRunConfig, model: nn.Module, data: Any, pad: int, steps: int, out: Path
) -> dict:
    losses: list[float] = []

    class _Record:
        def on_step_end(self, trainer: Any, metrics: dict[str, float]) -> None:
            if "loss" in metrics:
                losses.append(float(metrics["loss"]))

    config = _train_config(steps, cfg.batch_size, cfg.lr, cfg, out)
    callbacks = [_Record(), JsonlLogger(out / "metrics.jsonl", 10), ProgressBar(out.name)]
    summary = Trainer(config, model, ConversationLMTask(), data,
                      lambda s: collate_conversations(s, pad), callbacks).fit()  # fmt: skip
    k = max(1, min(10, len(losses) // 4))
    return {"steps": len(losses), "train_seconds": round(float(summary["train_seconds"]), 2),
            "first_loss": sum(losses[:k]) / k, "last_loss": sum(losses[-k:]) / k}  # fmt: skip


def run_composed(cfg: ComposedRunConfig, out_dir: str | Path) -> dict[str, Any]:
    """Pretrains the LM (unless `cfg.language`), composes, trains, evaluates; writes
    `OUT/summary.json`, `OUT/model` (the trained VLM, for `vlkit.from_pretrained` and `vlkit
    generate`) and `OUT/easy_vqa_{train,test}.json` (the conversation files)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    summary: dict[str, Any] = {"config": asdict(cfg)}
    language = Path(cfg.language) if cfg.language else out / "lm"
    if not cfg.language:
        summary["lm"] = pretrain_lm(cfg, language)
    train_json = write_llava_conversations(
        easy_vqa_conversations("train", cfg.train_questions), out / "easy_vqa_train.json"
    )
    test_json = write_llava_conversations(
        easy_vqa_conversations("test", cfg.max_test), out / "easy_vqa_test.json"
    )
    model, tokenizer, transform = _compose(cfg, language)
    if cfg.init_from:  # continue a run: its weights, then this config's stages
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(cfg.init_from) / "model.safetensors")))
    t = int(model.num_image_tokens)
    train = LlavaConversations(train_json, tokenizer, transform, t)
    test = LlavaConversations(test_json, tokenizer, transform, t)
    pad = tokenizer.pad_token_id
    stages = []
    if cfg.kind == "llava" and cfg.connector_steps:
        stage = _fit(cfg, model, train, pad, cfg.connector_steps, out / "stage1")
        stages.append({"stage": 1, **stage})
    if cfg.kind == "llava":  # LLaVA stage 2: projector + LM (Sec. 4.2)
        set_language_trainable(model, cfg.kind, True)
    summary["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary["total_parameters"] = sum(p.numel() for p in model.parameters())
    sample = collate_conversations([train[i] for i in range(8)], pad)
    summary.update(flops_per_sample(model, ConversationLMTask(), sample))  # main stage's
    stages.append({"stage": 2, **_fit(cfg, model, train, pad, cfg.steps, out / "stage2")})
    accuracy, predictions = conversation_accuracy(model, test, cfg.max_test)
    # The trained model, parts record included: `vlkit generate --model OUT/model` runs it.
    model.save_pretrained(out / "model")
    summary.update(
        kind=cfg.kind, stages=stages, accuracy=accuracy, test_items=len(predictions),
        composition=model.composition, model_dir=str(out / "model"),
        image_tokens=t, skipped_rows=train.skipped + test.skipped,
        examples=[(test.rows[i]["conversations"][0]["value"], p, test.answer(i))
                  for i, p in enumerate(predictions[:6])],
        train_seconds=round(sum(s["train_seconds"] for s in stages), 2),
        wall_seconds=round(time.perf_counter() - started, 1), threads=torch.get_num_threads(),
    )  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
