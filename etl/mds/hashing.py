"""Hash algorithms MDS indexes may record: hashlib's plus xxhash's, by their lowercase names."""

import hashlib
from typing import Callable

import xxhash


def _collect() -> dict[str, Callable]:
    algos = {
        name: getattr(hashlib, name)
        for name in hashlib.algorithms_available
        if hasattr(hashlib, name) and not name.startswith("shake_")
    }
    algos.update({name: getattr(xxhash, name) for name in xxhash.algorithms_available})
    return algos


HASHES: dict[str, Callable] = _collect()


def check_hash_names(names) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [n for n in names if n not in HASHES]
    if unknown:
        raise ValueError(f"unknown hash algorithm(s) {unknown}; allowed: {sorted(HASHES)}")
    return names


def hexdigest(name: str, data) -> str:
    return HASHES[name](data).hexdigest()
