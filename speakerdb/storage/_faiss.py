"""The typed boundary with FAISS: the few parts of its SWIG API the vector index uses.

FAISS ships partial type stubs that miss much of what it exposes (inverted lists, direct
maps, SWIG ownership); rather than scatter ``type: ignore``, the module is reached through
``faiss`` below (typed ``Any``) and every object that comes back is given one of these
protocols, which state exactly what speakerdb relies on.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["FaissIndex", "FlatIdMap", "InvertedLists", "IvfIndex", "faiss"]

faiss: Any = importlib.import_module("faiss")
"""The faiss module (faiss-cpu or faiss-gpu)."""

FloatMatrix = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]


class SwigObject(Protocol):
    """A SWIG proxy whose C++ object Python may hand over (``this.disown()``)."""

    this: Any


class FaissIndex(Protocol):
    """Any FAISS index: size, dimension, add, search, remove, reconstruct."""

    ntotal: int
    d: int

    def add_with_ids(self, x: FloatMatrix, ids: IdArray) -> None: ...
    def search(self, x: FloatMatrix, k: int) -> tuple[FloatMatrix, IdArray]: ...
    def remove_ids(self, selector: object) -> int: ...
    def reconstruct(self, key: int) -> FloatMatrix: ...
    def reconstruct_n(self, first: int, n: int) -> FloatMatrix: ...


class InvertedLists(SwigObject, Protocol):
    """FAISS ArrayInvertedLists: per-list ids and codes behind SWIG pointers."""

    code_size: int

    def list_size(self, list_no: int) -> int: ...
    def get_ids(self, list_no: int) -> object: ...
    def get_codes(self, list_no: int) -> object: ...
    def add_entries(self, list_no: int, n: int, ids: object, codes: object) -> int: ...


class IvfIndex(FaissIndex, Protocol):
    """IndexIVFFlat or IndexIVFScalarQuantizer: the lists, their quantizer, clustering
    parameters."""

    nlist: int
    nprobe: int
    parallel_mode: int
    code_size: int
    own_fields: bool
    invlists: InvertedLists
    quantizer: FaissIndex
    cp: Any  # ClusteringParameters
    direct_map: Any  # DirectMap: .type is one of faiss.DirectMap's constants

    def train(self, x: FloatMatrix) -> None: ...
    def encode_vectors(self, n: int, x: object, list_nos: object, codes: object) -> None: ...
    def reconstruct_batch(self, keys: IdArray) -> FloatMatrix: ...
    def replace_invlists(self, lists: InvertedLists, own: bool) -> None: ...
    def set_direct_map_type(self, kind: int) -> None: ...


class FlatIdMap(FaissIndex, Protocol):
    """IndexIDMap2 over an IndexFlatIP: the id table and the flat index inside."""

    id_map: object
    index: FaissIndex
