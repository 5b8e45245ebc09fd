"""Nearest-neighbour search over embeddings with faiss: build, search, save and load an index.

Embeddings are L2-normalised when they enter the index and queries when they are searched, so
the inner product faiss ranks by is the cosine similarity. Three kinds of index:

- "flat": `IndexFlatIP`, exact search (every query is compared with every row).
- "ivf": `IndexIVFFlat` with an inner-product coarse quantizer trained by spherical k-means on
  the data (Jegou et al. 2011); a query visits `nprobe` of the `nlist` cells, so recall grows
  with `nprobe` and equals exact search at `nprobe = nlist`.
- "hnsw": `IndexHNSWFlat` with `METRIC_INNER_PRODUCT` (Malkov & Yashunin 2018); `ef_search`
  (the size of the candidate list during search) trades speed for recall.

On disk an index is a directory with `index.faiss` (faiss' own format) and `index.json` (the
row names, dim, kind, user metadata, vlkit version and the SHA-256 of `index.faiss`, so a pair
of files from different saves is caught on load). Each file is written to a temporary file and
renamed into place; `index.json` goes last.

`vlkit.inference.image_search` builds such an index from a folder of images and searches it by
text or by image.

faiss is imported inside functions (the `index` extra: `pip install vlkit[index]`), so
`import vlkit` works without it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlkit.hub.weights import atomic_write
from vlkit.version import __version__

__all__ = ["KINDS", "EmbeddingIndex", "SearchHit"]

INDEX_FILE = "index.faiss"
META_FILE = "index.json"
KINDS = ("flat", "ivf", "hnsw")
_FORMAT_VERSION = 1
_DEFAULT_EF_SEARCH = 64


@dataclass(frozen=True)
class SearchHit:
    """One search result.

    Attributes:
        position: Row of the hit in the index (the order rows were added in).
        name: The row's name, e.g. the image path.
        score: Inner product of unit vectors, i.e. cosine similarity in [-1, 1].
    """

    position: int
    name: str
    score: float


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "vector search needs faiss: pip install 'vlkit[index]' (faiss-cpu)"
        ) from error
    return faiss


def _as_unit_rows(vectors: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """(N, D) or (D,) -> contiguous float32 (N, D) with unit-length rows (zero rows stay zero)."""
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().float().cpu().numpy()
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2:
        raise ValueError(f"{what} must have shape (N, D) or (D,), got {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    # Same epsilon as torch.nn.functional.normalize.
    return np.ascontiguousarray(array / np.maximum(norms, 1e-12), dtype=np.float32)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EmbeddingIndex:
    """Cosine-similarity search over named embeddings (a faiss index plus one name per row).

    Attributes:
        names: One name per row, in row order.
        dim: Embedding dimension.
        kind: "flat", "ivf" or "hnsw".
        metadata: JSON-serialisable information saved with the index (e.g. the model path).

    `search` may run in several threads at once (it changes no state: IVF and HNSW settings
    are passed per call); `add` must not run while another thread searches.
    """

    def __init__(
        self, index: Any, names: Sequence[str], kind: str, metadata: dict | None = None
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"index kind {kind!r}: expected one of {', '.join(KINDS)}")
        if len(names) != index.ntotal:
            raise ValueError(f"{len(names)} names for an index of {index.ntotal} vectors")
        self.index = index
        self.names = [str(name) for name in names]
        self.dim = int(index.d)
        self.kind = kind
        self.metadata = dict(metadata or {})

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray | torch.Tensor,
        names: Sequence[str],
        kind: str = "flat",
        nlist: int | None = None,
        hnsw_m: int = 32,
        metadata: dict | None = None,
    ) -> EmbeddingIndex:
        """An index over `embeddings` (N, D), which are L2-normalised here.

        Args:
            names: One name per row.
            kind: "flat" (exact), "ivf" or "hnsw" (approximate; see the module docstring).
            nlist: IVF cells; default round(4 * sqrt(N)), at most N. The IVF quantizer is
                trained on `embeddings`, so N must be at least `nlist`.
            hnsw_m: HNSW graph degree (neighbours per node per layer).
            metadata: Saved with the index; must be JSON-serialisable.
        """
        faiss = _faiss()
        vectors = _as_unit_rows(embeddings, "embeddings")
        count, dim = vectors.shape
        if len(names) != count:
            raise ValueError(f"{len(names)} names for {count} embeddings")
        if dim == 0:
            raise ValueError("embeddings have dimension 0")
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            if count == 0:
                raise ValueError("an IVF index is trained on its data: give at least one vector")
            nlist = nlist if nlist is not None else max(1, min(count, round(4 * math.sqrt(count))))
            if not 1 <= nlist <= count:
                raise ValueError(f"nlist={nlist}: must be between 1 and the {count} embeddings")
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.spherical = True  # unit-length centroids: cells by cosine similarity
            index.train(vectors)
        elif kind == "hnsw":
            if hnsw_m < 2:
                raise ValueError(f"hnsw_m={hnsw_m}: must be at least 2")
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"index kind {kind!r}: expected one of {', '.join(KINDS)}")
        if count:
            index.add(vectors)
        return cls(index, list(names), kind, metadata)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def nlist(self) -> int | None:
        """IVF cells, or None for other kinds."""
        return int(self.index.nlist) if self.kind == "ivf" else None

    def add(self, embeddings: np.ndarray | torch.Tensor, names: Sequence[str]) -> None:
        """Appends rows (L2-normalised here); their positions follow the existing rows."""
        vectors = _as_unit_rows(embeddings, "embeddings")
        if len(names) != len(vectors):
            raise ValueError(f"{len(names)} names for {len(vectors)} embeddings")
        if vectors.shape[1] != self.dim:
            raise ValueError(
                f"embeddings have dimension {vectors.shape[1]}, the index has {self.dim}"
            )
        if len(vectors):
            self.index.add(vectors)
        self.names.extend(str(name) for name in names)

    def _search_parameters(self, k: int, nprobe: int | None, ef_search: int | None) -> Any:
        faiss = _faiss()
        if self.kind == "ivf":
            nlist = self.index.nlist
            nprobe = nprobe if nprobe is not None else math.ceil(math.sqrt(nlist))
            if nprobe < 1:
                raise ValueError(f"nprobe={nprobe}: must be at least 1")
            return faiss.SearchParametersIVF(nprobe=min(nprobe, nlist))
        if self.kind == "hnsw":
            ef_search = ef_search if ef_search is not None else _DEFAULT_EF_SEARCH
            if ef_search < 1:
                raise ValueError(f"ef_search={ef_search}: must be at least 1")
            return faiss.SearchParametersHNSW(efSearch=max(ef_search, k))
        return None

    def search(
        self,
        queries: np.ndarray | torch.Tensor,
        k: int = 10,
        nprobe: int | None = None,
        *,
        ef_search: int | None = None,
    ) -> list[list[SearchHit]]:
        """The `k` rows most similar to each query, best first.

        Args:
            queries: (Q, D) or (D,); L2-normalised here.
            k: Hits per query, clipped to the index size. Approximate kinds can return fewer
                when the cells or graph nodes they visit hold fewer than `k` rows.
            nprobe: IVF cells visited per query (default ceil(sqrt(nlist))); ignored by other
                kinds. `nprobe = nlist` is exact search.
            ef_search: HNSW candidate-list size (default 64, at least `k`); ignored by other
                kinds.

        Returns:
            One list of hits per query row (a single list in a list for a (D,) query).
        """
        vectors = _as_unit_rows(queries, "queries")
        if vectors.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {vectors.shape[1]}, the index has {self.dim}")
        if k < 1:
            raise ValueError(f"k={k}: must be at least 1")
        k = min(k, len(self))
        if k == 0 or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        params = self._search_parameters(k, nprobe, ef_search)
        scores, positions = self.index.search(vectors, k, params=params)  # (Q, k) each
        return [
            [
                SearchHit(int(p), self.names[p], float(s))
                for p, s in zip(row_positions, row_scores, strict=True)
                if p >= 0  # faiss pads with -1 when fewer than k rows were reached
            ]
            for row_positions, row_scores in zip(positions, scores, strict=True)
        ]

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Writes `index.faiss` and `index.json` into `directory` (created if needed)."""
        faiss = _faiss()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            json.dumps(self.metadata)
        except (TypeError, ValueError) as error:
            raise ValueError(f"index metadata is not JSON-serialisable: {error}") from error
        digest: list[str] = []

        def write_index(tmp: Path) -> None:
            faiss.write_index(self.index, str(tmp))
            digest.append(_sha256(tmp))

        atomic_write(directory / INDEX_FILE, write_index)
        info = {
            "format_version": _FORMAT_VERSION,
            "vlkit_version": __version__,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self),
            "index_sha256": digest[0],
            "metadata": self.metadata,
            "names": self.names,
        }
        atomic_write(directory / META_FILE, lambda tmp: tmp.write_text(json.dumps(info) + "\n"))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> EmbeddingIndex:
        """Reads an index written by `save`; errors name the problem in one line."""
        faiss = _faiss()
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"{directory}: is a file, not an index directory")
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such index directory")
        for name in (INDEX_FILE, META_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory}: not an index directory (no {name})")
        try:
            info = json.loads((directory / META_FILE).read_text())
            names, kind, dim = info["names"], info["kind"], int(info["dim"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{directory / META_FILE}: unreadable ({error!r})") from error
        if not isinstance(names, list):
            raise ValueError(f"{directory / META_FILE}: 'names' is not a list")
        expected_digest = info.get("index_sha256")
        if expected_digest and _sha256(directory / INDEX_FILE) != expected_digest:
            raise ValueError(
                f"{directory}: {INDEX_FILE} does not match {META_FILE} (from different saves, "
                "or corrupted)"
            )
        try:
            index = faiss.read_index(str(directory / INDEX_FILE))
        except RuntimeError as error:
            message = str(error).strip().splitlines()[-1] if str(error).strip() else ""
            raise ValueError(
                f"{directory / INDEX_FILE}: unreadable faiss index {message}"
            ) from None
        expected_type = {"flat": faiss.IndexFlat, "ivf": faiss.IndexIVFFlat,
                         "hnsw": faiss.IndexHNSWFlat}.get(kind)  # fmt: skip
        if expected_type is None or not isinstance(index, expected_type):
            raise ValueError(
                f"{directory}: {META_FILE} says kind {kind!r} but {INDEX_FILE} holds an "
                f"{type(index).__name__}"
            )
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{directory / INDEX_FILE}: not an inner-product index")
        if int(index.d) != dim:
            raise ValueError(
                f"{directory}: {INDEX_FILE} has dimension {index.d}, {META_FILE} says {dim}"
            )
        if len(names) != index.ntotal:
            raise ValueError(
                f"{directory}: {META_FILE} lists {len(names)} names for {index.ntotal} vectors "
                f"in {INDEX_FILE}"
            )
        return cls(index, names, kind, info.get("metadata") or {})

    def __repr__(self) -> str:
        return f"EmbeddingIndex(kind={self.kind!r}, dim={self.dim}, size={len(self)})"
