"""Fine-tune a tiny SmolVLM on easy-VQA with LoRA on the CPU: test accuracy before and after.

    .venv/bin/python examples/finetune_smolvlm_easy_vqa.py --out runs/examples/finetune
    .venv/bin/python examples/finetune_smolvlm_easy_vqa.py --quick      # seconds (the tests)

No network, no pretrained weights: the example first writes a tiny SmolVLM with *random*
weights in SmolVLM's architecture (SigLIP tower on one 64-px view, pixel-shuffle connector,
2-layer Llama decoder) and processor (SmolVLM2's chat template, its special tokens, a byte-level
BPE tokenizer trained here on the easy-VQA text), saved by transformers
(`SmolVLMForConditionalGeneration.save_pretrained`). So the "before" accuracy is a random
model's, and what the run shows is that `vlkit finetune` teaches it the task through LoRA
adapters alone. Then:

1. easy-VQA questions written as Cauldron-style parquet (`images` as `{"bytes", "path"}`,
   `texts` as `[{"user", "assistant"}]`, as `HuggingFaceM4/the_cauldron` stores them);
2. test accuracy (exact match of greedy answers) before;
3. `vlkit finetune --model OUT/base --data OUT/train.parquet --eval-data OUT/test.parquet
   --out OUT/run --lora r=16,alpha=32,targets=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
   --merge lr=... max_steps=...` (the command is printed);
4. test accuracy after, by loading `OUT/run/final` afresh (`vlkit generate --model
   OUT/run/final` answers with it too).

The same command on a real model, on a GPU: `--model HuggingFaceTB/SmolVLM-256M-Instruct
precision=bf16 batch_size=16 micro_batch_size=4` (the processor, chat template and tokenizer
then come with the checkpoint; see docs/finetune.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

import torch

CHAT_TEMPLATE = (  # SmolVLM2's (HuggingFaceTB/SmolVLM2-256M-Video-Instruct), abridged
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<fake_token_around_image>", "<image>",
           "<global-img>", "<end_of_utterance>"]  # fmt: skip
SPECIAL += [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
LORA = "r=16,alpha=32,targets=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def easy_vqa_rows(split: str, limit: int | None, seed: int = 0) -> list[tuple[str, str, str]]:
    """(question, answer, image path) of `limit` easy-VQA questions drawn with `seed`."""
    from vlkit.data.datasets.vqa_text import load_easy_vqa_questions

    triples, paths = load_easy_vqa_questions(split)
    order = torch.randperm(len(triples), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = [triples[i] for i in order[: limit or len(triples)]]
    return [(q, a, str(paths[i])) for q, a, i in chosen]


def write_cauldron_parquet(rows: list[tuple[str, str, str]], path: Path) -> Path:
    """Cauldron-style rows: the PNG bytes inline, one user/assistant turn each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [[{"bytes": Path(p).read_bytes(), "path": Path(p).name}] for _, _, p in rows]
    texts = [[{"user": q, "assistant": a, "source": "easy_vqa"}] for q, a, _ in rows]
    pq.write_table(pa.table({"images": images, "texts": texts}), path)
    return path


def write_tiny_smolvlm(directory: Path, corpus: list[str], seed: int = 0, width: int = 128) -> Path:
    """A random SmolVLM in transformers' format with its processor files (see the docstring)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from vlkit.data.smolvlm.processor import SmolVLMProcessor

    directory.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
        additional_special_tokens=["<fake_token_around_image>", "<image>", "<global-img>"],
    ).save_pretrained(directory)  # fmt: skip
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    # One 64-px view (no tiling) of 8-px patches: 64 patch tokens, pixel shuffle by 2 -> 16.
    (directory / "processor_config.json").write_text(json.dumps({"image_seq_len": 16}))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SmolVLMImageProcessor", "processor_class": "SmolVLMProcessor",
        "do_convert_rgb": True, "do_image_splitting": False, "do_normalize": True,
        "do_pad": True, "do_rescale": True, "do_resize": True, "resample": 1,
        "rescale_factor": 1 / 255, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "size": {"longest_edge": 64}, "max_image_size": {"longest_edge": 64},
    }))  # fmt: skip
    processor = SmolVLMProcessor.from_pretrained(directory)
    config = transformers.SmolVLMConfig(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, image_size=64, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=processor.tokenizer.get_vocab_size(),
                         hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=False),
        scale_factor=2, image_token_id=processor.image_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    transformers.SmolVLMForConditionalGeneration(config).save_pretrained(directory)
    return directory


def accuracy(model_dir: Path, data: Path, limit: int | None = None) -> tuple[float, list[str]]:
    """Exact match of greedy answers to the questions of `data`, by the model in `model_dir`."""
    from vlkit.data.datasets.conversation_formats import read_conversations
    from vlkit.recipes.finetune import load_finetune_model
    from vlkit.recipes.finetune_eval import (
        answer_questions,
        heldout_questions,
        model_pipeline,
        score_answers,
    )

    model, processor = load_finetune_model(model_dir)
    questions = heldout_questions(read_conversations(data).rows)[:limit]
    predictions = answer_questions(model_pipeline(model, processor, model_dir), questions, 4)
    return score_answers(predictions, questions)["exact_match"], predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/examples/finetune")
    parser.add_argument("--train-questions", type=int, default=6000)
    parser.add_argument("--test-questions", type=int, default=500)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--quick", action="store_true", help="tiny data and 4 steps (tests)")
    args = parser.parse_args()
    if args.quick:
        args.train_questions, args.test_questions, args.steps = 32, 4, 4
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    train = easy_vqa_rows("train", args.train_questions)
    test = easy_vqa_rows("test", args.test_questions)
    corpus = [
        f"User:{q}<end_of_utterance>\nAssistant: {a}<end_of_utterance>\n" for q, a, _ in train
    ]
    base = write_tiny_smolvlm(out / "base", corpus * (1 if len(corpus) > 1000 else 20))
    train_file = write_cauldron_parquet(train, out / "train.parquet")
    test_file = write_cauldron_parquet(test, out / "test.parquet")
    before, _ = accuracy(base, test_file)
    print(f"before fine-tuning: easy-VQA test exact match {before:.4f} "
          f"({len(test)} questions, random weights)")  # fmt: skip

    run = out / "run"
    command = [
        "finetune", "--model", str(base), "--data", str(train_file), "--out", str(run),
        "--eval-data", str(test_file), "--lora", LORA, "--merge", "--overwrite",
        f"lr={args.lr}", f"max_steps={args.steps}", "batch_size=16", "warmup_steps=20",
        "max_new_tokens=4", "checkpoint_every=100", "generate_every=100" if not args.quick
        else "generate_every=3", "log_every=5" if args.quick else "log_every=20", "device=cpu",
        f"eval_limit={args.test_questions}",
    ]  # fmt: skip
    print("vlkit " + " ".join(command))
    from vlkit.cli.main import main as vlkit_main

    with contextlib.redirect_stdout(io.StringIO()):  # the run's JSON summary: read it below
        code = vlkit_main(command)
    if code:
        raise SystemExit(code)
    summary = json.loads((run / "summary.json").read_text())
    after, predictions = accuracy(run / "final", test_file)
    print(f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s "
          f"({summary['trainable_parameters']:,} LoRA of {summary['total_parameters']:,} "
          f"parameters); loss {summary['final_loss']:.4f}")  # fmt: skip
    print(f"after fine-tuning: easy-VQA test exact match {after:.4f} ({len(test)} questions)")
    print(
        f"examples: {[(q, p, a) for (q, a, _), p in zip(test[:4], predictions[:4], strict=True)]}"
    )
    print(f"vlkit generate --model {run / 'final'} --image {test[0][2]} --prompt '{test[0][0]}'")
    print(f"wall time {time.perf_counter() - started:.0f} s, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
