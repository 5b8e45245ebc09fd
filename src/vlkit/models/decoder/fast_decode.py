"""Fast one-token decoding: a static KV cache and the decode step replayed from a CUDA graph.

Why: at batch 1 a small decoder such as SmolVLM-256M's 30-layer text model does so little work per
token that the GPU idles between kernel launches; eager decoding is bound by Python and launch
latency (hundreds of small kernels per token), not by FLOPs or memory bandwidth. A CUDA graph
records those kernels once and replays them with a single launch (PyTorch CUDA-graph notes,
https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs). A graph replays fixed kernels on
fixed memory, so everything that changes from one token to the next must live in tensors whose
shapes and addresses stay put: the `StaticKVCache` buffers, and the (B, 1) input ids, the (B, 1)
RoPE positions and the (1,) cache position that are copied in before each replay. This is the recipe of Hugging Face's
`StaticCache` + `torch.compile(mode="reduce-overhead")`, written out by hand.

`DecodeStep` is the same step on every device: on CUDA it is captured after `warmup_steps` eager
calls, elsewhere (CPU, CI) it runs eagerly, so the code path a graph records is the one the CPU
tests check against the dynamic `KVCache`.
"""

from __future__ import annotations

import weakref

import torch

from vlkit.models.decoder.kv_cache import StaticKVCache
from vlkit.models.decoder.llama import DecoderLM


class DecodeStep:
    """Next-token logits for one new token per row, over a `StaticKVCache`.

    Calling it with the (B,) tokens at slot `cache.seq_len` (and their (B,) RoPE positions)
    writes their keys/values there and returns the (B, V) float logits of the following token. With `cuda_graph`, the first
    `warmup_steps` calls run eagerly on a side stream (lazy initialisation such as cuBLAS
    workspaces must not happen during capture), the next one captures the step in a
    `torch.cuda.CUDAGraph` (capture records kernels without running them, so no call is wasted
    and the cache is never written twice), and every later call is one `replay()`.

    Args:
        model: The decoder, held by weak reference (the caller keeps it alive). Its parameters
            must stay where they are while a graph is alive: the graph holds their addresses,
            not the tensors.
        cache: The static cache, already holding the prefilled prompt.
        cuda_graph: Capture a CUDA graph; None = when the cache is on a CUDA device.
        warmup_steps: Eager calls before the capture.
    """

    def __init__(
        self,
        model: DecoderLM,
        cache: StaticKVCache,
        cuda_graph: bool | None = None,
        warmup_steps: int = 2,
    ) -> None:
        device = cache.keys[0].device
        if cuda_graph is None:
            cuda_graph = device.type == "cuda"
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the cache is on {device}")
        self._model = weakref.ref(model)
        self.cache, self.cuda_graph = cache, cuda_graph
        self.warmup_steps = warmup_steps
        self.input_ids = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=device)
        self.position_ids = torch.zeros_like(self.input_ids)  # (B, 1) RoPE positions
        self.cache_position = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # (B, V) output of the captured graph
        self.calls = 0

    def _step(self) -> torch.Tensor:
        """The recorded computation: embed -> layers over the static cache -> (B, V) logits."""
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this DecodeStep was deleted")
        out = model(
            input_ids=self.input_ids,
            position_ids=self.position_ids,
            cache=self.cache,
            cache_position=self.cache_position,
        )
        return out.logits[:, -1]

    def _warmup(self) -> torch.Tensor:
        # As in the PyTorch docs' example: warm up on a side stream that waits for, and is then
        # waited for by, the current stream.
        current = torch.cuda.current_stream(self.input_ids.device)
        side = torch.cuda.Stream(self.input_ids.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            logits = self._step()
        current.wait_stream(side)
        return logits

    def _capture(self) -> None:
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()

    @torch.no_grad()
    def __call__(
        self, tokens: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) tokens -> (B, V) float logits of the next token (a fresh tensor).

        Args:
            tokens: (B,) new token ids.
            position_ids: (B,) or (B, 1) RoPE positions of the tokens; None = their slot
                (`cache.seq_len`, `DecoderLM.forward`'s default).
        """
        cache = self.cache
        if cache.seq_len >= cache.max_len:
            raise ValueError(f"static cache full ({cache.max_len} slots)")
        self.input_ids.copy_(tokens.view(-1, 1))
        if position_ids is None:
            self.position_ids.fill_(cache.seq_len)
        else:
            self.position_ids.copy_(position_ids.view(-1, 1))
        self.cache_position.fill_(cache.seq_len)
        if not self.cuda_graph:
            logits = self._step()
        elif self.graph is None and self.calls < self.warmup_steps:
            logits = self._warmup()
        else:
            if self.graph is None:
                self._capture()
            assert self.graph is not None and self.logits is not None
            self.graph.replay()
            logits = self.logits.clone()  # the next replay overwrites the graph's output
        self.calls += 1
        cache.seq_len += 1
        return logits


def _fingerprint(model: DecoderLM) -> tuple[tuple[int, torch.dtype], ...]:
    """Addresses and dtypes of the model's tensors: a graph is only valid while they hold."""
    tensors = [*model.parameters(), *model.buffers()]
    return tuple((t.data_ptr(), t.dtype) for t in tensors)


# Reusable steps per model (weak keys: they go away with the model), the most recent last.
# Re-capturing a graph and re-allocating the cache costs more than a short generation, so calls
# with a shape seen recently share them, as transformers keeps its StaticCache on the model.
_STEPS: weakref.WeakKeyDictionary[DecoderLM, dict[tuple, DecodeStep]] = weakref.WeakKeyDictionary()
MAX_STEPS_PER_MODEL = 4


def decode_step_for(
    model: DecoderLM,
    batch_size: int,
    max_len: int,
    device: torch.device,
    dtype: torch.dtype,
    cuda_graph: bool | None = None,
) -> DecodeStep:
    """A `DecodeStep` with an empty `StaticKVCache` of (batch_size, max_len) slots for `model`.

    A step made by an earlier call is reused (cache reset in place, graph kept) when batch size,
    length, device, dtype, graph mode and the model's tensor addresses are unchanged; otherwise
    a new one is made, and the least recently used one beyond `MAX_STEPS_PER_MODEL` is freed.
    The registry and the steps refer to the model only weakly.
    """
    if cuda_graph is None:
        cuda_graph = torch.device(device).type == "cuda"
    key = (batch_size, max_len, str(device), dtype, cuda_graph, _fingerprint(model))
    steps = _STEPS.setdefault(model, {})
    step = steps.pop(key, None)
    if step is not None:
        step.cache.reset()
    else:
        cache = StaticKVCache(model.config, batch_size, max_len, device=device, dtype=dtype)
        step = DecodeStep(model, cache, cuda_graph=cuda_graph)
        while len(steps) >= MAX_STEPS_PER_MODEL:
            steps.pop(next(iter(steps)))  # the least recently used
    steps[key] = step  # (re)insert as the most recent
    return step


def release(model: DecoderLM) -> None:
    """Drop the model's cached decode steps (their static caches and CUDA graph memory)."""
    _STEPS.pop(model, None)
