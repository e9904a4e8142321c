"""The in-memory vector index: one unit-norm centroid per speaker id, searched by inner product
(= cosine, as the vectors are normalised).

Kinds:
  flat   exact search over every vector (FAISS IndexFlatIP keyed by speaker id, IndexIDMap2)
  ivf    inverted lists (FAISS IndexIVFFlat, full-precision vectors, ids kept in a hash map);
         only a few lists are scanned per query -- see :mod:`speakerdb.storage.index_policy`

Both keep full float32 vectors, so the scores they return are exact inner products; the store
re-scores candidates with the one cosine rule anyway (:mod:`speakerdb.scoring`).
This module does not know about SQL; :mod:`speakerdb.storage.store` keeps it in step.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt

from speakerdb.errors import StoreError

__all__ = ["IndexParams", "VectorIndex"]

IdArray = npt.NDArray[np.int64]
FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class IndexParams:
    """How an index is built: ``kind`` ("flat" or "ivf"), and for ivf the number of lists
    ``nlist`` and of lists scanned per query ``nprobe``."""

    kind: str = "flat"
    nlist: int = 0
    nprobe: int = 0

    def describe(self) -> str:
        if self.kind == "flat":
            return "flat"
        return f"ivf(nlist={self.nlist}, nprobe={self.nprobe})"


class VectorIndex:
    """Vectors keyed by int64 id. Not thread-safe for writes: the store serialises access."""

    def __init__(self, dimension: int, params: IndexParams | None = None) -> None:
        self.dimension = dimension
        self.params = params or IndexParams()
        self._index = self._empty(self.params)

    def _empty(self, params: IndexParams) -> faiss.Index:
        if params.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimension))
        if params.kind == "ivf":
            quantizer = faiss.IndexFlatIP(self.dimension)
            index = faiss.IndexIVFFlat(
                quantizer, self.dimension, params.nlist, faiss.METRIC_INNER_PRODUCT
            )
            index.own_fields = True
            quantizer.this.disown()
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
            index.nprobe = params.nprobe
            return index
        raise StoreError(f"unknown index kind {params.kind!r}")

    # --- building ----------------------------------------------------------------------------

    @classmethod
    def build(
        cls, dimension: int, ids: IdArray, vectors: FloatMatrix, params: IndexParams
    ) -> VectorIndex:
        """A new index holding ``vectors`` (n, d) under ``ids`` (n,); trains ivf on them."""
        index = cls(dimension, params)
        if params.kind == "ivf":
            index._train(vectors)
        index.upsert(ids, vectors)
        return index

    def _train(self, vectors: FloatMatrix) -> None:
        ivf = faiss.extract_index_ivf(self._index)
        # k-means on a sample is enough for list centres; 64 points per list is FAISS's own
        # lower recommendation (its default ceiling of 256 per list costs 4x the time).
        sample = vectors
        limit = 64 * ivf.nlist
        if len(vectors) > limit:
            rng = np.random.default_rng(0)
            sample = vectors[rng.choice(len(vectors), limit, replace=False)]
        ivf.cp.max_points_per_centroid = 64
        ivf.train(np.ascontiguousarray(sample, dtype=np.float32))

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    # --- contents ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def upsert(self, ids: IdArray, vectors: FloatMatrix) -> None:
        """Insert or replace: (n,) int64 ids, (n, d) float32 unit vectors."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dimension)
        if len(ids) != len(vectors):
            raise StoreError("index upsert: ids and vectors differ in length")
        if len(ids) == 0:
            return
        if len(np.unique(ids)) != len(ids):
            raise StoreError("index upsert: duplicate ids in one call")
        self.remove(ids)
        self._index.add_with_ids(vectors, ids)

    def remove(self, ids: IdArray) -> int:
        """Remove these ids (absent ones are ignored); returns how many were removed."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0 or len(self) == 0:
            return 0
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def get(self, id_: int) -> FloatMatrix | None:
        """The (d,) vector stored under ``id_``, or None."""
        try:
            return np.asarray(self._index.reconstruct(int(id_)), dtype=np.float32)
        except RuntimeError:
            return None

    def contents(self) -> tuple[IdArray, FloatMatrix]:
        """Every (id, vector) held: (n,) int64 sorted ascending, (n, d) float32."""
        if self.params.kind == "flat":
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            vectors = self._index.index.reconstruct_n(0, len(ids)) if len(ids) else None
        else:
            ids, vectors = self._ivf_contents()
        if vectors is None:
            return np.zeros(0, np.int64), np.zeros((0, self.dimension), np.float32)
        order = np.argsort(ids, kind="stable")
        return ids[order], np.asarray(vectors, dtype=np.float32)[order]

    def _ivf_contents(self) -> tuple[IdArray, FloatMatrix | None]:
        ivf = faiss.extract_index_ivf(self._index)
        lists = ivf.invlists
        id_parts: list[IdArray] = []
        vector_parts: list[FloatMatrix] = []
        for list_no in range(ivf.nlist):
            size = lists.list_size(list_no)
            if not size:
                continue
            ids = faiss.rev_swig_ptr(lists.get_ids(list_no), size).copy()
            codes = faiss.rev_swig_ptr(lists.get_codes(list_no), size * lists.code_size)
            id_parts.append(ids.astype(np.int64))
            vector_parts.append(codes.view(np.float32).reshape(size, self.dimension).copy())
        if not id_parts:
            return np.zeros(0, np.int64), None
        return np.concatenate(id_parts), np.concatenate(vector_parts)

    # --- search ------------------------------------------------------------------------------

    def search(self, queries: FloatMatrix, k: int) -> tuple[FloatMatrix, IdArray]:
        """Top-k by inner product: queries (m, d) -> scores (m, k) float32, ids (m, k) int64,
        best first; missing places (k > size, or ivf lists too small) have id -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dimension)
        if len(self) == 0 or k < 1:
            m = len(queries)
            return np.full((m, max(k, 0)), -np.inf, np.float32), np.full((m, max(k, 0)), -1)
        scores, ids = self._index.search(queries, k)
        return scores, ids.astype(np.int64)

    # --- persistence -------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, dimension: int, params: IndexParams) -> VectorIndex:
        index = cls.__new__(cls)
        index.dimension = dimension
        index.params = params
        loaded = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if loaded.d != dimension:
            raise StoreError(f"index file holds {loaded.d}-d vectors, expected {dimension}")
        if params.kind == "ivf":
            faiss.extract_index_ivf(loaded).nprobe = params.nprobe
        index._index = loaded
        return index
