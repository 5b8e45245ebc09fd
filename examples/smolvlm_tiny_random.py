"""Load a SmolVLM2 checkpoint with vlkit, chat with it, and check it against transformers.

    .venv/bin/python examples/smolvlm_tiny_random.py --out runs/examples/smolvlm

No network: the example first writes a tiny *random* SmolVLM2-shaped checkpoint with
transformers (SigLIP tower of 32-px tiles, pixel-shuffle connector, 2-layer Llama decoder, a
300-token BPE tokenizer, SmolVLM2's chat template), so the generated text is gibberish; the
point is that vlkit reads the same directory layout as a downloaded real checkpoint. A real
one loads the same way from its directory, e.g. after
`huggingface-cli download HuggingFaceTB/SmolVLM2-256M-Video-Instruct --local-dir SmolVLM2-256M`:
`vlkit.from_pretrained("SmolVLM2-256M")`, `SmolVLMProcessor.from_pretrained("SmolVLM2-256M")`.

Expected (2-core CPU, 1 thread, 2026-11-27, ~6 s; `--quick` is the same run): the skimage
cat photo (451 x 300) becomes 7 tiles of 32 px (a 2 x 3 grid plus the global view) and an
82-token prompt; vlkit's logits equal transformers' (max |diff| 0.00e+00 here; the tests allow
1e-4), and the 12 greedy tokens are identical.
"""

import argparse
import json
from pathlib import Path

import torch
import transformers
from PIL import Image
from skimage import data
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers.utils import logging as transformers_logging

import vlkit
from vlkit.data.smolvlm.processor import SmolVLMProcessor

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="runs/examples/smolvlm")
parser.add_argument("--max-new-tokens", type=int, default=12)
parser.add_argument("--quick", action="store_true", help="the same (already quick) run")
args = parser.parse_args()
torch.set_num_threads(1)
transformers_logging.disable_progress_bar()
directory = Path(args.out)
directory.mkdir(parents=True, exist_ok=True)

# 1. A processor directory as on the hub: tokenizer files, chat template, image settings.
special = ["<|endoftext|>", "<|im_start|>", "<fake_token_around_image>", "<image>",
           "<global-img>", "<end_of_utterance>"]  # fmt: skip
special += [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator(
    ["User: What is in this image? Assistant: A cat with green eyes lying on a rug."] * 10,
    trainers.BpeTrainer(vocab_size=300, special_tokens=special, show_progress=False,
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
)  # fmt: skip
transformers.PreTrainedTokenizerFast(
    tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
    pad_token="<|endoftext|>", unk_token="<|endoftext|>",
    additional_special_tokens=["<fake_token_around_image>", "<image>", "<global-img>"],
).save_pretrained(directory)  # fmt: skip
chat_template = (  # SmolVLM2's, abridged
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
(directory / "chat_template.json").write_text(json.dumps({"chat_template": chat_template}))
(directory / "processor_config.json").write_text(json.dumps({"image_seq_len": 4}))
(directory / "preprocessor_config.json").write_text(json.dumps({
    "image_processor_type": "SmolVLMImageProcessor", "processor_class": "SmolVLMProcessor",
    "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
    "do_rescale": True, "do_resize": True, "resample": 1, "rescale_factor": 1 / 255,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "size": {"longest_edge": 96}, "max_image_size": {"longest_edge": 32},
}))  # fmt: skip

# 2. Random weights in transformers' format: 32-px tiles of 4-px patches -> 64 patch tokens,
# pixel shuffle by 4 -> 4 tokens per tile (image_seq_len above).
processor = SmolVLMProcessor.from_pretrained(directory)
config = transformers.SmolVLMConfig(
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, image_size=32, patch_size=4),
    text_config=dict(model_type="llama", vocab_size=processor.tokenizer.get_vocab_size(),
                     hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    scale_factor=4, image_token_id=processor.image_token_id,
)  # fmt: skip
torch.manual_seed(0)
reference = transformers.SmolVLMForConditionalGeneration(config).eval()
reference.save_pretrained(directory)

# 3. vlkit: load, build the chat prompt, process the image, generate.
model = vlkit.from_pretrained(directory).eval()  # a vlkit.models.smolvlm.GenerativeVLM
processor = SmolVLMProcessor.from_pretrained(directory)
messages = [{"role": "user", "content": [{"type": "image"},
                                         {"type": "text", "text": "What is in this image?"}]}]  # fmt: skip
text = processor.apply_chat_template(messages, add_generation_prompt=True)
image = Image.fromarray(data.chelsea())
inputs = processor(text=text, images=[[image]])
print(f"prompt: {text!r}")
print(f"image {image.size[0]} x {image.size[1]} -> pixel_values "
      f"{tuple(inputs['pixel_values'].shape)}, {inputs['input_ids'].shape[1]} prompt tokens")  # fmt: skip
with torch.no_grad():
    ours = model.generate(**inputs, max_new_tokens=args.max_new_tokens,
                          eos_token_id=processor.stop_token_ids)  # fmt: skip
new_tokens = ours[0, inputs["input_ids"].shape[1] :]
print(f"vlkit answer, token ids {new_tokens.tolist()}: "
      f"{processor.decode(new_tokens, skip_special_tokens=True)!r}")  # fmt: skip

# 4. The same inputs through transformers: logits and greedy tokens.
with torch.no_grad():
    logits = model(**inputs).logits
    reference_logits = reference(**inputs).logits
    theirs = reference.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False,
                                eos_token_id=processor.stop_token_ids,
                                pad_token_id=processor.stop_token_ids[0])  # fmt: skip
print(f"max |vlkit - transformers| logits: {(logits - reference_logits).abs().max():.2e}")
print(f"greedy tokens identical: {torch.equal(ours, theirs)}")
