"""A training loader whose position can be checkpointed, so that ``--resume`` is exact.

detectron2's ``build_detection_train_loader`` restarts its shuffle on every resume (the resumed
run sees the first batches again) and its augmentations draw from each worker's global RNG, so
they depend on how many workers there are and when they started. Here the data stream is a pure
function of (seed, position):

- position ``p`` of the infinite stream holds dataset item ``permutation(seed, p // n)[p % n]``
  (one fresh shuffle per epoch of ``n`` items); rank ``r`` of ``w`` takes the positions
  ``p % w == r``, and workers split a rank's positions round robin, in order;
- the mapper (augmentations) of position ``p`` runs with ``random``, ``numpy`` and ``torch``
  seeded from (seed, p); the caller's RNG states are restored afterwards;
- the loader's state is the next position to draw and the positions waiting in the
  aspect-ratio buckets. Loading it replays the waiting positions first, which rebuilds the
  buckets exactly, then continues the stream.

So a resumed run draws exactly the batches the uninterrupted run would have, with any number of
workers. :func:`build_resumable_train_loader` takes ``build_detection_train_loader``'s arguments.
"""
from __future__ import annotations

import itertools
import logging
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

__all__ = ["ResumableTrainLoader", "build_resumable_train_loader"]

logger = logging.getLogger(__name__)


def _seeds(*key: int) -> Tuple[int, int]:
    """Two independent 32-bit seeds derived from integers (e.g. seed, position)."""
    a, b = np.random.SeedSequence([int(k) for k in key]).generate_state(2)
    return int(a), int(b)


class _PositionSeededStream(torchdata.IterableDataset):
    """Yields ``(position, mapped item)`` for this rank's positions, replaying some first."""

    def __init__(self, dataset, mapper: Optional[Callable], seed: int, rank: int,
                 world_size: int, replay: Sequence[int], next_position: int):
        self.dataset = dataset
        self.mapper = mapper
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.replay = list(replay)
        self.next_position = next_position
        self._epoch, self._order = -1, None

    def _positions(self) -> Iterator[int]:
        first = self.next_position + (self.rank - self.next_position) % self.world_size
        return itertools.chain(self.replay, itertools.count(first, self.world_size))

    def index(self, position: int) -> int:
        n = len(self.dataset)
        epoch = position // n
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(_seeds(self.seed, epoch)[0])
            self._epoch, self._order = epoch, torch.randperm(n, generator=generator).tolist()
        return self._order[position % n]

    def item(self, position: int) -> Any:
        """The mapped item of ``position``: the same in any process, at any time."""
        item = self.dataset[self.index(position)]
        if self.mapper is None:
            return item
        np_seed, torch_seed = _seeds(self.seed, position, 1)
        py_state, np_state = random.getstate(), np.random.get_state()
        torch_state = torch.random.default_generator.get_state()
        try:
            random.seed(np_seed)
            np.random.seed(np_seed)
            torch.random.default_generator.manual_seed(torch_seed)
            mapped = self.mapper(item)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.random.default_generator.set_state(torch_state)
        if mapped is None:
            raise ValueError(
                f"The mapper returned None for dataset item {self.index(position)}; the "
                "resumable loader needs a mapper that maps every item (filter the dataset "
                "instead, e.g. load_dataset_dicts(filter_empty=True))."
            )
        return mapped

    def __iter__(self):
        info = torchdata.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        for k, position in enumerate(self._positions()):
            if k % workers == worker:
                yield position, self.item(position)


def _single(batch):
    return batch[0]


class ResumableTrainLoader:
    """Iterable of training batches (lists of mapped dicts) with ``state_dict`` and
    ``load_state_dict``; see the module docstring. Iterating starts from the loaded state."""

    def __init__(self, dataset, *, mapper: Optional[Callable], batch_size: int, seed: int,
                 aspect_ratio_grouping: bool = True, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.mapper = mapper
        self.batch_size = batch_size
        self.seed = int(seed)
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.num_workers = num_workers
        self.rank, self.world_size = rank, world_size
        self.worker_init_fn: Optional[Callable[[int], None]] = None  # as torch's DataLoader
        self._next_position = 0  # of the stream: every earlier position of this rank is drawn
        self._pending: List[List[Tuple[int, Any]]] = []  # buckets: drawn, not yet batched
        self._replay: List[int] = []

    def state_dict(self) -> Dict[str, Any]:
        # A loaded state not yet iterated still owes its replay: it is pending too.
        pending = sorted(self._replay + [p for bucket in self._pending for p, _ in bucket])
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "next_position": self._next_position, "pending": pending}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue exactly where ``state`` was taken. A state from another rank layout (a
        resume with a different number of processes) keeps the seed and skips every position
        drawn before, but cannot rebuild the buckets: the order then differs slightly."""
        self.seed = int(state["seed"])
        self._next_position = int(state["next_position"])
        self._pending = []
        if (state["rank"], state["world_size"]) == (self.rank, self.world_size):
            self._replay = list(state["pending"])
        else:
            self._replay = []

    def __iter__(self):
        self._pending = [[], []] if self.aspect_ratio_grouping else [[]]
        replay, self._replay = self._replay, []
        stream = _PositionSeededStream(self.dataset, self.mapper, self.seed, self.rank,
                                       self.world_size, replay, self._next_position)
        for position, item in self._iterate(stream):
            if position >= self._next_position:
                self._next_position = position + 1
            bucket = self._pending[self._bucket(item)]
            bucket.append((position, item))
            if len(bucket) == self.batch_size:
                batch = [d for _, d in bucket]
                del bucket[:]
                yield batch

    def _iterate(self, stream) -> Iterator[Tuple[int, Any]]:
        if self.num_workers == 0:
            return iter(stream)
        # The loader's own generator: creating its workers must not draw from the global RNG
        # (an uninterrupted and a resumed run create them at different iterations).
        return iter(torchdata.DataLoader(
            stream, batch_size=1, collate_fn=_single, num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed), worker_init_fn=self.worker_init_fn,
        ))

    def _bucket(self, item) -> int:
        if not self.aspect_ratio_grouping:
            return 0
        return 0 if item["width"] > item["height"] else 1


def build_resumable_train_loader(dataset, *, mapper: Optional[Callable] = None,
                                 total_batch_size: int, aspect_ratio_grouping: bool = True,
                                 num_workers: int = 0, seed: Optional[int] = None,
                                 ) -> ResumableTrainLoader:
    """``build_detection_train_loader`` with a checkpointable position (see the module).

    Args:
        dataset: a list of dataset dicts (or a map-style dataset).
        mapper: called on a copy of each dict (e.g. ``DatasetMapper``); None passes them on.
        total_batch_size: over all processes; each rank gets ``total_batch_size / world``.
        seed: of the shuffle and the augmentations; None draws one shared by all ranks
            (detectron2's rule, reproducible under ``train.seed``). A resume takes the seed
            from the checkpoint.
    """
    world_size, rank = comm.get_world_size(), comm.get_rank()
    if total_batch_size <= 0 or total_batch_size % world_size:
        raise ValueError(f"total_batch_size={total_batch_size} must be a positive multiple "
                         f"of the number of processes ({world_size})")
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset, copy=False)
    if len(dataset) == 0:
        raise ValueError("The training dataset is empty")
    if seed is None:
        seed = comm.shared_random_seed()
    return ResumableTrainLoader(
        dataset, mapper=mapper, batch_size=total_batch_size // world_size, seed=seed,
        aspect_ratio_grouping=aspect_ratio_grouping, num_workers=num_workers, rank=rank,
        world_size=world_size,
    )
