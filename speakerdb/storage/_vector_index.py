"""The in-memory vector index: one unit-norm centroid per speaker id, searched by inner product
(= cosine, as the vectors are normalised).

Kinds:
  flat   exact search over every vector (FAISS IndexFlatIP keyed by speaker id, IndexIDMap2)
  ivf    inverted lists (FAISS IndexIVFFlat, full-precision vectors, ids kept in a hash map);
         only a few lists are scanned per query -- see :mod:`speakerdb.storage._index_policy`
  ivfsq  the same inverted lists holding each vector's residual from its list centre in 8 bits
         per dimension (FAISS IndexIVFScalarQuantizer, QT_8bit): a quarter of the memory

flat and ivf keep full float32 vectors, so the scores they return are exact inner products;
ivfsq's are approximate. Either way the store re-scores a shortlist of candidates
(:meth:`IndexParams.shortlist`, longer for ivfsq) with the one cosine rule on the
full-precision centroids read from SQL (:mod:`speakerdb.scoring`), so every score and
decision returned is exactly the one exact search gives for that speaker.
This module does not know about SQL; :mod:`speakerdb.storage._store` keeps it in step.
"""

from __future__ import annotations

import mmap
import threading
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from speakerdb.errors import StoreError
from speakerdb.storage._faiss import FaissIndex, FlatIdMap, InvertedLists, IvfIndex, faiss
from speakerdb.storage._probing import probe_lists, reference_span, search_lists

__all__ = ["IndexParams", "VectorIndex", "gpu_number"]

IdArray = npt.NDArray[np.int64]
FloatMatrix = npt.NDArray[np.float32]
CodeMatrix = npt.NDArray[np.uint8]

RESCORE_EXTRA = 8  # full-precision kinds: candidates beyond k re-scored exactly
SHORTLIST_FACTOR = 10  # ivfsq: candidates per answer re-scored exactly ...
SHORTLIST_MIN = 50  # ... and at least this many
# A restricted search (one tenant's speakers) in an inverted index scores every allowed
# vector exactly up to this many (a few ms per query at 256-d), and scans lists above it.
EXACT_AMONG_MAX = 50_000
# An inverted index read without its id map removes by scanning the lists' ids until it has
# scanned this many times its size (a scan costs about a tenth of building the map), then
# builds the map.
SCANS_BEFORE_ID_MAP = 5
# Searches call FAISS's search_preassigned (speakerdb.storage._probing), which spreads a
# batch's queries over threads only in this mode (in the default mode 0 FAISS's own search
# splits the batch before calling it).
SEARCH_PARALLEL_MODE = 3
# The FAISS class each kind deserialises to (a file whose header and payload disagree
# about the kind is refused).
_FAISS_CLASS = {"flat": "IndexIDMap2", "ivf": "IndexIVFFlat", "ivfsq": "IndexIVFScalarQuantizer"}


@dataclass(frozen=True)
class IndexParams:
    """How an index is built: ``kind`` ("flat", "ivf" or "ivfsq"); for the inverted-list
    kinds the number of lists ``nlist``, of lists scanned per query ``nprobe``, and how many
    vectors the lists were trained on (``trained_on``)."""

    kind: str = "flat"
    nlist: int = 0
    nprobe: int = 0
    trained_on: int = 0

    @property
    def inverted(self) -> bool:
        """Whether the index is made of trained inverted lists (ivf, ivfsq)."""
        return self.kind in ("ivf", "ivfsq")

    @property
    def exact_vectors(self) -> bool:
        """Whether the index stores the vectors at full precision (not ivfsq)."""
        return self.kind != "ivfsq"

    def shortlist(self, k: int) -> int:
        """How many candidates to take from the index for a top-``k`` answer, before they
        are re-scored exactly: a few more than ``k`` for full-precision kinds (to undo ivf's
        ordering among near ties), ``SHORTLIST_FACTOR`` times more for ivfsq, whose
        quantised scores may misorder candidates by up to a few hundredths of cosine
        (benchmarks/identify_scale.py measures the resulting recall)."""
        if self.kind == "ivfsq":
            return max(SHORTLIST_FACTOR * k, SHORTLIST_MIN)
        return k + RESCORE_EXTRA

    def describe(self) -> str:
        if self.kind == "flat":
            return "flat"
        return f"{self.kind}(nlist={self.nlist}, nprobe={self.nprobe})"


def gpu_number(device: str | None) -> int | None:
    """The GPU to hold the index on for a device string ("cuda", "cuda:1"), or None for the
    CPU: when the device is not CUDA, or FAISS was built without GPU support (faiss-cpu), or
    no GPU is visible. Parsed without torch (the storage layer never imports it)."""
    if not device:
        return None
    kind, _, number = str(device).partition(":")
    if kind != "cuda" or not hasattr(faiss, "StandardGpuResources"):
        return None
    if faiss.get_num_gpus() < 1:
        return None
    index = int(number) if number.isdigit() else 0
    return index if index < faiss.get_num_gpus() else None


class VectorIndex:
    """Vectors keyed by int64 id. Not thread-safe for writes: the store serialises access.

    The master copy always lives on the CPU (updates, persistence). With a GPU
    (:meth:`use_gpu`), searches run on a GPU replica of it, refreshed after changes, with
    the fixed nprobe (the widened probing of :mod:`._probing` runs on the CPU only).

    An index loaded by :meth:`from_mapped` searches its inverted lists where they lie in
    the (authenticated, memory-mapped) file, and builds its id -> list map only when a
    lookup by id first needs it; its first change copies it into memory of its own
    (:meth:`_own`), once.
    """

    def __init__(self, dimension: int, params: IndexParams | None = None) -> None:
        self.dimension = dimension
        self.params = params or IndexParams()
        self._index = self._empty(self.params)
        self._gpu: int | None = None
        self._gpu_index: FaissIndex | None = None
        self._gpu_resources: object | None = None
        # The bytes a mapped index's quantiser (and, until its first change, lists) are
        # views of: kept alive as long as the index.
        self._mapped: npt.NDArray[np.uint8] | None = None
        self._lists_mapped = False
        self._id_map_lock = threading.Lock()
        self._scanned = 0  # list entries scanned by removals without an id map
        # The probe rule's reference (_probing) and the nprobe it was measured for.
        self._span: tuple[int, float] | None = None

    def use_gpu(self, device: str | None) -> bool:
        """Search on the GPU named by ``device`` when possible; returns whether it will."""
        self._gpu = gpu_number(device)
        self._gpu_index = None
        return self._gpu is not None

    def _searcher(self) -> FaissIndex:
        if self._gpu is None:
            return self._index
        if self._gpu_index is None:
            if self._gpu_resources is None:
                self._gpu_resources = faiss.StandardGpuResources()
            self._gpu_index = cast(
                FaissIndex, faiss.index_cpu_to_gpu(self._gpu_resources, self._gpu, self._index)
            )
        return self._gpu_index

    def _empty(self, params: IndexParams) -> FaissIndex:
        if params.kind == "flat":
            return cast(FlatIdMap, faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimension)))
        if params.kind == "ivf":
            quantizer = faiss.IndexFlatIP(self.dimension)
            index = cast(
                IvfIndex,
                faiss.IndexIVFFlat(
                    quantizer, self.dimension, params.nlist, faiss.METRIC_INNER_PRODUCT
                ),
            )
        elif params.kind == "ivfsq":
            quantizer = faiss.IndexFlatIP(self.dimension)
            index = cast(
                IvfIndex,
                faiss.IndexIVFScalarQuantizer(
                    quantizer,
                    self.dimension,
                    params.nlist,
                    faiss.ScalarQuantizer.QT_8bit,
                    faiss.METRIC_INNER_PRODUCT,
                    True,  # encode residuals from the list centre: finer steps
                ),
            )
        else:
            raise StoreError(f"unknown index kind {params.kind!r}")
        index.own_fields = True
        quantizer.this.disown()
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.nprobe = params.nprobe
        index.parallel_mode = SEARCH_PARALLEL_MODE
        return index

    # --- building ----------------------------------------------------------------------------

    @classmethod
    def build(
        cls, dimension: int, ids: IdArray, vectors: FloatMatrix, params: IndexParams
    ) -> VectorIndex:
        """A new index holding ``vectors`` (n, d) under ``ids`` (n,); trains ivf/ivfsq on
        them."""
        index = cls(dimension, params)
        if params.inverted:
            index._train(vectors)
            index._fill_lists(
                np.ascontiguousarray(ids, dtype=np.int64),
                np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dimension),
            )
        else:
            index.upsert(ids, vectors)
        return index

    # Inverted lists are growable arrays: adding entries one by one, as FAISS's add does,
    # leaves their capacity up to twice their size. Lists are therefore filled in one piece
    # per list, and re-packed once many lists have grown since (see _note_growth).
    _REPACK_FRACTION = 0.3

    def _fill_lists(self, ids: IdArray, vectors: FloatMatrix) -> None:
        """Put (n,) ids / (n, d) vectors into freshly packed inverted lists (ivf, ivfsq)."""
        ivf = self._ivf()
        lists = cast(InvertedLists, faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size))
        if len(ids):
            _, assignment = ivf.quantizer.search(vectors, 1)
            self._pack(lists, assignment[:, 0], ids, self._encode(vectors, assignment[:, 0]))
        self._install(ivf, lists, len(ids))

    def _encode(self, vectors: FloatMatrix, assignment: npt.NDArray[np.int64]) -> CodeMatrix:
        """The inverted-list codes of (n, d) vectors assigned to lists (n,): their raw bytes
        (ivf), or their quantised residuals (ivfsq), (n, code_size) uint8."""
        if self.params.kind == "ivf":
            return vectors.view(np.uint8)
        ivf = self._ivf()
        codes = np.empty((len(vectors), ivf.code_size), dtype=np.uint8)
        assignment = np.ascontiguousarray(assignment, dtype=np.int64)
        ivf.encode_vectors(
            len(vectors), faiss.swig_ptr(vectors), faiss.swig_ptr(assignment), faiss.swig_ptr(codes)
        )
        return codes

    def _repack(self) -> None:
        """Re-pack the inverted lists to exactly their size (same lists, same contents; the
        id map rebuilt if there was one)."""
        ivf = self._ivf()
        old = ivf.invlists
        lists = cast(InvertedLists, faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size))
        for list_no in range(ivf.nlist):
            size = old.list_size(list_no)
            if size:
                lists.add_entries(list_no, size, old.get_ids(list_no), old.get_codes(list_no))
        self._install(ivf, lists, int(ivf.ntotal), id_map=self._has_id_map())

    @staticmethod
    def _pack(
        lists: InvertedLists,
        assignment: npt.NDArray[np.int64],
        ids: IdArray,
        codes: npt.NDArray[np.uint8],
    ) -> None:
        order = np.argsort(assignment, kind="stable")
        assignment = assignment[order]
        ids = np.ascontiguousarray(ids[order])
        codes = np.ascontiguousarray(codes[order])
        bounds = np.flatnonzero(np.diff(assignment)) + 1
        for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(order)], strict=True):
            lists.add_entries(
                int(assignment[start]),
                int(stop - start),
                faiss.swig_ptr(ids[start:stop]),
                faiss.swig_ptr(codes[start:stop]),
            )

    def _install(
        self, ivf: IvfIndex, lists: InvertedLists, total: int, id_map: bool = True
    ) -> None:
        ivf.replace_invlists(lists, True)
        lists.this.disown()  # owned by the index now
        ivf.ntotal = total
        self._index.ntotal = total
        # Rebuild the id -> (list, offset) map from the new lists (or leave none).
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)
        if id_map:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        self._grown_lists: set[int] = set()
        self._gpu_index = None

    def _note_growth(self, vectors: FloatMatrix) -> None:
        ivf = self._ivf()
        _, assignment = ivf.quantizer.search(vectors, 1)
        grown: set[int] = getattr(self, "_grown_lists", set())
        grown.update(int(a) for a in assignment[:, 0])
        self._grown_lists = grown
        if len(grown) > self._REPACK_FRACTION * ivf.nlist:
            self._repack()

    def _ivf(self) -> IvfIndex:
        return cast(IvfIndex, faiss.extract_index_ivf(self._index))

    def _train(self, vectors: FloatMatrix) -> None:
        ivf = self._ivf()
        self._span = None  # new centres, a new reference for the probe rule
        # k-means on a sample is enough for list centres; 64 points per list is FAISS's own
        # lower recommendation (its default ceiling of 256 per list costs 4x the time).
        sample = vectors
        limit = 64 * ivf.nlist
        if len(vectors) > limit:
            rng = np.random.default_rng(0)
            sample = vectors[rng.choice(len(vectors), limit, replace=False)]
        ivf.cp.max_points_per_centroid = 64
        ivf.train(np.ascontiguousarray(sample, dtype=np.float32))

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
        self._own()
        self.remove(ids)
        self._index.add_with_ids(vectors, ids)
        self._gpu_index = None
        if self.params.inverted:
            self._note_growth(vectors)

    def remove(self, ids: IdArray) -> int:
        """Remove these ids (absent ones are ignored); returns how many were removed."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0 or len(self) == 0:
            return 0
        self._own()
        self._gpu_index = None
        if self.params.inverted and not self._has_id_map():
            if self._scanned <= SCANS_BEFORE_ID_MAP * len(self):
                # No id map yet (read from a file without one): a parallel scan of the
                # lists' ids finds these, for a small fraction of building the map; once
                # scans have cost about as much, the map is built.
                self._scanned += len(self)
                return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
            self._ensure_id_map()
        if self.params.inverted:
            # The id hash map of an IVF index only removes through an explicit id array.
            selector = faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))
            return int(self._index.remove_ids(selector))
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def get(self, id_: int) -> FloatMatrix | None:
        """The (d,) vector stored under ``id_`` (decoded, so approximate, for ivfsq: see
        :attr:`IndexParams.exact_vectors`), or None."""
        self._ensure_id_map()
        try:
            return np.asarray(self._index.reconstruct(int(id_)), dtype=np.float32)
        except RuntimeError:
            return None

    def stored_form(self, vectors: FloatMatrix) -> FloatMatrix:
        """What (n, d) unit vectors become once stored in this index, (n, d) float32: the
        vectors themselves, or for ivfsq their decoded 8-bit residuals plus the centre of
        the list each is assigned to -- what :meth:`contents` gives back for them (used by
        ``db check`` to compare a quantised index with SQL exactly)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dimension)
        if self.params.exact_vectors or not len(vectors):
            return vectors
        ivf = self._ivf()
        _, assignment = ivf.quantizer.search(vectors, 1)
        codes = self._encode(vectors, assignment[:, 0])
        decoded = np.asarray(faiss.downcast_index(ivf).sq.decode(codes), dtype=np.float32)
        centres = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        return np.asarray(decoded + centres[assignment[:, 0]], dtype=np.float32)

    def contents(self) -> tuple[IdArray, FloatMatrix]:
        """Every (id, vector) held: (n,) int64 sorted ascending, (n, d) float32 (decoded,
        so approximate, for ivfsq: see :attr:`IndexParams.exact_vectors`)."""
        if self.params.kind == "flat":
            flat = cast(FlatIdMap, self._index)
            ids = faiss.vector_to_array(flat.id_map).astype(np.int64)
            vectors = flat.index.reconstruct_n(0, len(ids)) if len(ids) else None
        else:
            ids, vectors = self._ivf_contents()
        if vectors is None:
            return np.zeros(0, np.int64), np.zeros((0, self.dimension), np.float32)
        order = np.argsort(ids, kind="stable")
        return ids[order], np.asarray(vectors, dtype=np.float32)[order]

    def _ivf_contents(self) -> tuple[IdArray, FloatMatrix | None]:
        self._ensure_id_map()
        ivf = self._ivf()
        lists = ivf.invlists
        id_parts: list[IdArray] = []
        vector_parts: list[FloatMatrix] = []
        for list_no in range(ivf.nlist):
            size = lists.list_size(list_no)
            if not size:
                continue
            ids = faiss.rev_swig_ptr(lists.get_ids(list_no), size).copy().astype(np.int64)
            id_parts.append(ids)
            if self.params.kind == "ivfsq":
                vector_parts.append(np.asarray(ivf.reconstruct_batch(ids), dtype=np.float32))
                continue
            codes = faiss.rev_swig_ptr(lists.get_codes(list_no), size * lists.code_size)
            vector_parts.append(codes.view(np.float32).reshape(size, self.dimension).copy())
        if not id_parts:
            return np.zeros(0, np.int64), None
        return np.concatenate(id_parts), np.concatenate(vector_parts)

    # --- search ------------------------------------------------------------------------------

    def search(
        self, queries: FloatMatrix, k: int, allowed: IdArray | None = None
    ) -> tuple[FloatMatrix, IdArray]:
        """Top-k by inner product: queries (m, d) -> scores (m, k) float32, ids (m, k) int64,
        best first; missing places (k > size, or ivf lists too small) have id -1.
        ``allowed``: (n,) int64 ids, ascending, the only ones that may be returned (a
        tenant's speakers); None: any."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dimension)
        size = len(self) if allowed is None else len(allowed)
        if size == 0 or k < 1:
            m = len(queries)
            return np.full((m, max(k, 0)), -np.inf, np.float32), np.full((m, max(k, 0)), -1)
        if allowed is not None:
            scores, ids = self._search_among(queries, min(k, size), allowed)
        elif self.params.inverted and self._gpu is None:
            scores, ids = self._search_lists(queries, min(k, size))
        else:
            scores, ids = self._searcher().search(queries, min(k, size))
        if k > ids.shape[1]:
            pad = k - ids.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return scores, ids.astype(np.int64)

    def _search_among(
        self, queries: FloatMatrix, k: int, allowed: IdArray
    ) -> tuple[FloatMatrix, IdArray]:
        """Exact top-k among ``allowed``: a flat index searches with an id selector; the
        inverted kinds score the allowed vectors one by one when there are few of them
        (a small tenant in a large index: its nearest lists may hold none of them), else
        scan their lists through the selector like an unrestricted search."""
        if self.params.inverted and len(allowed) <= EXACT_AMONG_MAX:
            self._ensure_id_map()
            vectors = self._ivf().reconstruct_batch(np.ascontiguousarray(allowed))
            scores_all = queries @ vectors.T
            order = np.argsort(-scores_all, axis=1, kind="stable")[:, :k]
            return (
                np.take_along_axis(scores_all, order, axis=1).astype(np.float32),
                allowed[order],
            )
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed))
        if self.params.inverted:
            return self._search_lists(queries, k, selector)
        # The CPU copy: a GPU index does not take selectors.
        params = faiss.SearchParameters(sel=selector)
        scores, ids = cast(Any, self._index).search(queries, k, params=params)
        return scores, ids

    def _search_lists(
        self, queries: FloatMatrix, k: int, selector: object | None = None
    ) -> tuple[FloatMatrix, IdArray]:
        """An inverted index's search on the CPU: the lists of :mod:`._probing`'s rule (the
        policy's nprobe, widened for a query the list ranking says little about), scanned
        for the top ``k`` (through ``selector`` when given)."""
        ivf = self._ivf()
        nprobe = min(self.params.nprobe, ivf.nlist)
        if self._span is None or self._span[0] != nprobe:
            # The centres never change in this object's life (a retrain builds a new one).
            self._span = (nprobe, reference_span(ivf.quantizer, ivf.nlist, nprobe))
        span = self._span[1]
        groups = probe_lists(ivf.quantizer, queries, nprobe, ivf.nlist, span)
        return search_lists(ivf, queries, k, groups, selector)

    # --- persistence -------------------------------------------------------------------------

    def to_bytes(self, id_map: bool = True) -> bytes:
        """The FAISS serialisation. ``id_map`` False: an inverted index without its id hash
        map (16 bytes per vector, and a hash table to refill on reading), which a reader
        builds from the lists when it first needs it (see :meth:`from_mapped`). This index
        drops its own map too, to be rebuilt the same way: rebuilding it here would hold
        the caller (a save, under the store's lock) for as long again as the write."""
        if id_map or not self.params.inverted:
            return bytes(faiss.serialize_index(self._index).tobytes())
        with self._id_map_lock:
            self._ivf().set_direct_map_type(faiss.DirectMap.NoMap)
            self._scanned = 0
        return bytes(faiss.serialize_index(self._index).tobytes())

    @classmethod
    def from_bytes(
        cls, data: bytes | bytearray, dimension: int, params: IndexParams
    ) -> VectorIndex:
        """An index from :meth:`to_bytes` output, copied into memory of its own. Raises
        StoreError when it is not a ``params.kind`` index of ``dimension``-d vectors."""
        loaded = cast(FaissIndex, faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)))
        index = cls._wrap(loaded, dimension, params)
        index._ensure_id_map()
        return index

    @classmethod
    def from_mapped(
        cls, data: npt.NDArray[np.uint8], dimension: int, params: IndexParams
    ) -> VectorIndex:
        """An index from :meth:`to_bytes` output held in ``data`` ((n,) uint8, typically a
        read-only memory map of an authenticated file), without copying it: the inverted
        lists and the quantiser stay views of ``data``, which the index keeps alive, so
        loading costs a small fraction of the payload whatever its size. ``data`` must not
        change while the index lives (the caller authenticates it first and maps a file no
        writer modifies in place). A flat index is copied (:meth:`from_bytes`): flat kinds
        are the small ones. Raises StoreError as :meth:`from_bytes`."""
        if not params.inverted:
            return cls.from_bytes(data.tobytes(), dimension, params)
        reader = faiss.ZeroCopyIOReader(faiss.swig_ptr(data), data.size)
        loaded = cast(FaissIndex, faiss.read_index(reader, faiss.IO_FLAG_MMAP_IFC))
        index = cls._wrap(loaded, dimension, params)
        index._mapped = data
        index._lists_mapped = True
        return index

    @classmethod
    def _wrap(cls, loaded: FaissIndex, dimension: int, params: IndexParams) -> VectorIndex:
        index = cls.__new__(cls)
        index.dimension = dimension
        index.params = params
        if loaded.d != dimension:
            raise StoreError(f"index file holds {loaded.d}-d vectors, expected {dimension}")
        if type(loaded).__name__ != _FAISS_CLASS.get(params.kind):
            raise StoreError(f"index file does not hold a {params.kind} index")
        if params.inverted:
            ivf = cast(IvfIndex, faiss.extract_index_ivf(loaded))
            ivf.nprobe = params.nprobe
            ivf.parallel_mode = SEARCH_PARALLEL_MODE  # not kept in the file
        index._index = loaded
        index._gpu = None
        index._gpu_index = None
        index._gpu_resources = None
        index._mapped = None
        index._lists_mapped = False
        index._id_map_lock = threading.Lock()
        index._scanned = 0
        index._span = None
        return index

    @property
    def mapped(self) -> bool:
        """Whether the index searches lists mapped from a file (it has not changed since)."""
        return self._lists_mapped

    def _has_id_map(self) -> bool:
        return not self.params.inverted or self._ivf().direct_map.type != faiss.DirectMap.NoMap

    def _ensure_id_map(self) -> None:
        """Build the id -> (list, offset) hash map of an inverted index read without one (a
        scan of the lists' ids); lookups by id (reconstruct, removal) need it, searches do
        not."""
        if not self.params.inverted:
            return
        with self._id_map_lock:
            ivf = self._ivf()
            if ivf.direct_map.type == faiss.DirectMap.NoMap:
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)

    def _own(self) -> None:
        """Before the first change of a mapped index: copy its lists out of the mapping
        (FAISS cannot resize a list that is a view, and aborts the process if asked to),
        once per load; searches never pay it. The quantiser's centres stay views of the
        mapping (they never change), which is kept; the lists' pages are given back."""
        if self._mapped is None or not self._lists_mapped:
            return
        self._repack()  # fresh lists of its own (the id map still only when needed)
        self._lists_mapped = False
        mapping: object = self._mapped
        while isinstance(mapping, np.ndarray):  # a slice of an array over a memoryview
            mapping = mapping.base
        if isinstance(mapping, memoryview):
            mapping = mapping.obj
        if isinstance(mapping, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            # Unmaps the pages from this process (the file's cache is untouched): the
            # centres fault back in on their next read, the copied lists never do.
            mapping.madvise(mmap.MADV_DONTNEED)
