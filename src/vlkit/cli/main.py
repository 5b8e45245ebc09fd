"""The `vlkit` command line. It parses arguments and calls typed library functions.

    vlkit demo [--out runs/demo]
    vlkit train [--config FILE|NAME] [key=value ...] [--resume latest|DIR]
    vlkit data shard --root DIR --annotations FILE --out DIR [--samples-per-shard N]
    vlkit zeroshot IMAGE... --model PATH --labels "a cat,a dog" [--templates NAME|FILE] [--json]
    vlkit embed --model PATH (--images DIR | --texts FILE) --out FILE.npy
    vlkit eval zeroshot|retrieval|vqa|captions ... --out DIR   (metrics.json + report.md + plot)
    vlkit train-vlm kind=llava task=easy_vqa vision=CLIP_CHECKPOINT out_dir=DIR [key=value ...]
    vlkit generate --model DIR --image X [--image Y] [--video FRAMES_DIR] --prompt "..." [--int8]
    vlkit index --model PATH --images DIR --out INDEX_DIR [--kind flat|ivf|hnsw]
    vlkit search --index INDEX_DIR (--text "..." | --image FILE) [--k 5] [--json]
    vlkit explain --model PATH --image FILE --text "..." [--text "..."] --out OUT.png   (ViT relevance)
    vlkit similarity --model PATH --images FILE... --texts "a,b,c" --out OUT.png
    vlkit export --model PATH --out DIR [--opset N] [--no-normalize]   (ONNX, checked with onnxruntime)
    vlkit serve [--model PATH] [--index DIR] [--vlm RUN_OR_SMOLVLM_DIR] [--host 127.0.0.1] [--port 8000]

Bad input (missing or unreadable image, unsupported checkpoint, bad arguments) prints one line
naming the problem and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from vlkit.cli import evaluate as cli_eval
from vlkit.cli.export import add_export_parser, export_command
from vlkit.cli.generate import add_generate_parsers, generate_command, train_vlm_command
from vlkit.cli.index import add_index_parsers, format_search_results, index_command, search_command
from vlkit.cli.shard import add_shard_parsers, shard_command
from vlkit.cli.viz import add_viz_parsers, explain_command, similarity_command
from vlkit.data.images import ImageLoadError
from vlkit.evaluation.report import json_safe
from vlkit.hub import CheckpointError
from vlkit.inference.embed import embed, zeroshot
from vlkit.recipes.clip_run import train
from vlkit.recipes.demo import run_demo
from vlkit.training.config import load_train_config
from vlkit.training.trainer import TrainingDiverged


class UsageError(ValueError):
    """Bad command-line input, reported in one line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlkit", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train a small CLIP on easy-VQA and evaluate it")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--seconds", type=float, default=None, help="training time budget")

    tr = commands.add_parser("train", help="contrastive training (torchrun for several processes)")
    tr.add_argument("--config", default=None, help="JSON/Python config file or built-in name")
    tr.add_argument(
        "overrides", nargs="*", help="key=value settings over the config (optim.lr=1e-3, ...)"
    )
    tr.add_argument("--resume", default=None, help="'latest' or a checkpoint directory")

    add_shard_parsers(commands)

    zs = commands.add_parser("zeroshot", help="rank labels for images")
    zs.add_argument("images", nargs="+")
    zs.add_argument("--model", required=True, help="checkpoint directory, file or hub id")
    zs.add_argument("--labels", required=True, help='comma-separated, e.g. "a cat,a dog"')
    zs.add_argument("--templates", default="none", help="openai-imagenet, cifar, none or a FILE")
    zs.add_argument("--top", type=int, default=None, help="show only the best N labels")
    zs.add_argument("--json", action="store_true", help="print JSON instead of a table")

    em = commands.add_parser("embed", help="write image or text embeddings to .npy")
    em.add_argument("--model", required=True)
    group = em.add_mutually_exclusive_group(required=True)
    group.add_argument("--images", help="directory of images")
    group.add_argument("--texts", help="text file, one text per line")
    em.add_argument("--out", required=True, help="output .npy file")
    _add_eval_parser(commands)
    add_generate_parsers(commands)
    add_export_parser(commands)
    add_index_parsers(commands)
    add_viz_parsers(commands)

    sv = commands.add_parser("serve", help="web app: zero-shot, image search, VQA / captions")
    sv.add_argument("--model", default=None, help="CLIP-like checkpoint directory or hub id")
    sv.add_argument("--index", default=None, help="image index directory from `vlkit index`")
    sv.add_argument("--vlm", default=None, help="train-vlm run dir or SmolVLM dir (generation)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--templates", default="none", help="template set for text search queries")
    return parser


def _add_eval_parser(commands: argparse._SubParsersAction) -> None:
    """`vlkit eval ...`: benchmark files -> OUT/metrics.json, OUT/report.md and a plot."""
    ev = commands.add_parser("eval", help="evaluate on standard benchmark files, write a report")
    kinds = ev.add_subparsers(dest="eval_command", required=True)

    zs = kinds.add_parser("zeroshot", help="zero-shot classification of an ImageFolder tree")
    zs.add_argument("--model", required=True, help="checkpoint directory or hub id")
    zs.add_argument("--images", required=True, help="ROOT with one subfolder per class")
    zs.add_argument("--templates", default="openai-imagenet", help="openai-imagenet, cifar, FILE")

    rt = kinds.add_parser("retrieval", help="image-text retrieval on COCO-style captions")
    rt.add_argument("--model", required=True, help="checkpoint directory or hub id")
    rt.add_argument("--captions", required=True, help="COCO captions JSON (images + annotations)")
    rt.add_argument("--images", required=True, help="folder holding the images' file_name")
    rt.add_argument("--max-k", type=int, default=10, help="Recall@K curve up to this K")

    vq = kinds.add_parser("vqa", help="official VQAv2 accuracy of a results file")
    vq.add_argument("--annotations", required=True, help="VQAv2 annotations JSON")
    vq.add_argument("--questions", required=True, help="VQAv2 questions JSON")
    vq.add_argument("--results", required=True, help="[{question_id, answer}, ...] JSON")

    cp = kinds.add_parser("captions", help="BLEU / ROUGE-L / CIDEr-D of COCO caption results")
    cp.add_argument("--references", required=True, help="COCO captions JSON")
    cp.add_argument("--results", required=True, help="[{image_id, caption}, ...] JSON")
    cp.add_argument("--metrics", default="bleu,rouge_l,cider_d", help="comma-separated")
    cp.add_argument("--tokenizer", default="ptb", choices=["ptb", "ptb-java", "none"])

    for sub in (zs, rt):
        sub.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
        sub.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    for sub in (zs, rt, vq, cp):
        sub.add_argument("--out", required=True, help="output directory")


def run_eval(args: argparse.Namespace) -> dict:
    """Dispatches `vlkit eval KIND` to vlkit.cli.evaluate; returns the metrics."""
    if args.eval_command == "zeroshot":
        return cli_eval.eval_zeroshot(args.model, args.images, args.out, args.templates,
                                      args.batch_size, args.device)  # fmt: skip
    if args.eval_command == "retrieval":
        return cli_eval.eval_retrieval(args.model, args.captions, args.images, args.out,
                                       args.max_k, args.batch_size, args.device)  # fmt: skip
    if args.eval_command == "vqa":
        return cli_eval.eval_vqa(args.annotations, args.questions, args.results, args.out)
    tokenizer = None if args.tokenizer == "none" else args.tokenizer
    metrics = cli_eval.parse_metric_list(args.metrics)
    return cli_eval.eval_captions(args.references, args.results, args.out, metrics, tokenizer)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            kwargs = {"out_dir": args.out}
            if args.seconds is not None:
                kwargs["seconds_budget"] = args.seconds
            summary = run_demo(**kwargs)
            print(json.dumps(summary, indent=2))
        elif args.command == "train":
            summary = train(load_train_config(args.config, args.overrides), resume=args.resume)
            print(json.dumps(summary, indent=2))
        elif args.command == "data":
            print(json.dumps(shard_command(args), indent=2))
        elif args.command == "zeroshot":
            labels = [label.strip() for label in args.labels.split(",") if label.strip()]
            results = zeroshot(args.images, args.model, labels, args.templates, args.top)
            if args.json:
                print(json.dumps(results, indent=2))
            else:
                for result in results:
                    print(result["image"])
                    for item in result["ranking"]:
                        print(f"  {item['probability']:8.4f}  {item['label']}")
        elif args.command == "embed":
            embeddings = embed(args.model, args.out, args.images, args.texts)
            print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {args.out}")
        elif args.command == "generate":
            generate_command(args)
        elif args.command == "train-vlm":
            print(json.dumps(train_vlm_command(args.overrides), indent=2))
        elif args.command == "index":
            print(json.dumps(index_command(args), indent=2))
        elif args.command == "search":
            print(format_search_results(search_command(args), as_json=args.json))
        elif args.command == "explain":
            print(json.dumps(explain_command(args), indent=2))
        elif args.command == "similarity":
            print(json.dumps(similarity_command(args), indent=2))
        elif args.command == "export":
            print(json.dumps(export_command(args), indent=2))
        elif args.command == "serve":
            # fastapi/uvicorn are the optional `serve` extra: import them only for this command.
            from vlkit.serve import run_server

            run_server(
                args.model, args.index, args.host, args.port, args.templates, vlm_path=args.vlm
            )
        elif args.command == "eval":
            print(json.dumps(json_safe(run_eval(args)), indent=2))
    except (UsageError, ImageLoadError, CheckpointError, FileNotFoundError, ValueError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"vlkit: error: {message}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"vlkit: training stopped: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
