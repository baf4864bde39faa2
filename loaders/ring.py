"""Batch slots in shared memory that a DataLoader worker fills again and again.

Why: a batch that goes from a worker to the main process has to live in shared memory.
Allocating a fresh one per batch, as torch's collate does, costs the allocation, a page
fault on every 4 KiB page and a file-descriptor hand-over. On the 2-core machine the
benchmark ran on, that was about 6 ms for a batch of 64 x 3 x 224 x 224, a sixth of the
worker's time per batch. So each worker keeps a few slots instead. It sends a slot's
tensors to the main process once per pass, and after that only the slot's number.

A slot's state lives in a small shared array:
- FREE: the worker may take it.
- SENT: the worker is filling it or has sent it.
- HELD: the consumer has it.

The hand-off:
- Without pinning, the consumer gets tensors that are views of the slot itself: no copy.
  The slot is FREE again when the last tensor (or view, or numpy array) on that batch is
  gone, through a finalizer on the array the tensors are built from.
- When pinning memory for a GPU, the pin thread copies the batch into pinned memory (a
  copy the DataLoader makes anyway) and frees the slot at once.
- A worker that finds no FREE slot, because the consumer still holds its batches, sends
  a fresh batch for that turn (the old path). It never waits on the consumer, so it
  cannot hang, and a consumer that keeps batches only costs speed.
- At the start of each pass, the worker frees the slots still SENT. Those are batches
  the DataLoader dropped, for example when a pass was abandoned. This is safe because
  the DataLoader drains every result of the previous pass before it asks a worker for
  the next pass's first batch. HELD slots stay with the consumer.

Known limit: a received batch is an ordinary CPU tensor, not one in torch's shared
memory (`is_shared()` is False, unlike a plain DataLoader worker's batch). So
`share_memory_()`, which a torch.multiprocessing queue calls, moves it, and the tensor
stays correct. But a numpy view taken from it before the move then points at memory
that is no longer the tensor's. Torch behaves the same for any CPU tensor: reading such a
view can crash. Take numpy views after the move, or copy.

Only `make_loader`'s ShardLoader knows how to take a RingBatch. A ShardStream put into a
plain DataLoader keeps the ring off and yields plain tensors.
"""

from __future__ import annotations

import os
import secrets
import weakref

import numpy as np
import torch

FREE, SENT, HELD = 0, 1, 2


def _shared_batch(batch_size: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # N x 3 x H x W in channels-last memory: decoders and the resize kernel produce HWC,
    # so filling it is a plain copy, and convolutions on CPU and GPU prefer this layout.
    # Allocated straight in shared memory (share_memory_() would allocate, then copy).
    nbytes = batch_size * size * size * 3
    images = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))
    images = images.view(batch_size, size, size, 3).permute(0, 3, 1, 2)
    labels = torch.empty(0, dtype=torch.int64).set_(
        torch.UntypedStorage._new_shared(batch_size * 8)).view(batch_size)
    return images, labels


def new_batch(batch_size: int, size: int, shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch to fill: in shared memory when a worker will send it, else plain."""
    if shared:
        return _shared_batch(batch_size, size)
    images = torch.empty((batch_size, size, size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    return images, torch.empty(batch_size, dtype=torch.int64)


class WorkerRing:
    """A worker's slots. Lives only in the worker process; built there on first use."""

    def __init__(self, slots: int, batch_size: int, size: int):
        # The token names this ring in the main process's registry: the pid to prune the
        # registry when the worker is gone, the random part so a reused pid never matches.
        self.token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.slots = [_shared_batch(batch_size, size) for _ in range(slots)]
        self.states = torch.zeros(slots, dtype=torch.uint8).share_memory_()
        self._states = self.states.numpy()  # plain loads and stores on the shared bytes
        self.pass_number = 0
        self._sent: set = set()
        self.fallbacks = 0  # turns that found no FREE slot

    def begin_pass(self) -> None:
        self.pass_number += 1
        self._sent = set()
        self._states[self._states == SENT] = FREE

    def acquire(self) -> int | None:
        for slot in range(len(self.slots)):
            if self._states[slot] == FREE:
                self._states[slot] = SENT
                return slot
        self.fallbacks += 1
        return None

    def release(self, slot: int) -> None:
        self._states[slot] = FREE

    def message(self, slot: int, count: int, keys) -> RingBatch:
        first_of_pass = not self._sent
        tensors = None if slot in self._sent else self.slots[slot]
        self._sent.add(slot)
        return RingBatch(self.token, self.pass_number, slot, count,
                         tensors, self.states if first_of_pass else None, keys)


class _Received:
    """The main process's view of one worker ring in one pass."""

    def __init__(self, pass_number: int):
        self.pass_number = pass_number
        self.slots: dict = {}  # slot -> (HWC numpy rows, labels)
        self.states: np.ndarray | None = None


# token -> _Received. Touched by the main thread and by the DataLoader's pin thread; each
# operation is a single dict step under the GIL.
_received: dict[str, _Received] = {}


class _Pinned(tuple):
    """A pinned batch, marked with the ring it came from for the loader's bookkeeping."""

    def __new__(cls, batch, token):
        pinned = super().__new__(cls, batch)
        pinned.ring_token = token
        return pinned


def _free_slot(states: np.ndarray, slot: int) -> None:
    states[slot] = FREE


class RingBatch:
    """What a worker sends instead of tensors: which slot holds the batch, and how full."""

    __slots__ = ("count", "keys", "pass_number", "slot", "states", "tensors", "token")

    def __init__(self, token, pass_number, slot, count, tensors, states, keys):
        self.token, self.pass_number, self.slot, self.count = token, pass_number, slot, count
        self.tensors, self.states, self.keys = tensors, states, keys

    def take(self, pin: bool = False):
        """(images, labels[, keys]) for the consumer; see the module text for who frees the slot."""
        view = _received.get(self.token)
        if view is None or view.pass_number != self.pass_number:
            _prune_dead_workers()
            view = _received[self.token] = _Received(self.pass_number)
        if self.states is not None:
            view.states = self.states.numpy()
        if self.tensors is not None:
            images, labels = self.tensors
            view.slots[self.slot] = (images.permute(0, 2, 3, 1).numpy(), labels)
        rows, labels = view.slots[self.slot]
        labels = labels[:self.count].clone()  # 8 bytes a sample: not worth tracking
        if pin:
            images = torch.from_numpy(rows[:self.count]).permute(0, 3, 1, 2).pin_memory()
            view.states[self.slot] = FREE
            labels = labels.pin_memory()
            batch = (images, labels) if self.keys is None else (images, labels, self.keys)
            return _Pinned(batch, self.token)
        else:
            owner = rows[:self.count]  # a new array object, only for this batch
            view.states[self.slot] = HELD
            weakref.finalize(owner, _free_slot, view.states, self.slot)
            images = torch.from_numpy(owner).permute(0, 3, 1, 2)
        return (images, labels) if self.keys is None else (images, labels, self.keys)

    def pin_memory(self, device=None):  # called by the DataLoader's pin-memory thread
        return self.take(pin=True)


def forget_rings(tokens) -> None:
    """Drop the main process's mappings of these rings (their workers have exited or are
    shut down). Batches the consumer still holds keep their own mapping alive."""
    for token in list(tokens):
        _received.pop(token, None)


def _prune_dead_workers() -> None:
    for token in list(_received):
        try:
            os.kill(int(token.split("-", 1)[0]), 0)  # signal 0: only asks whether it exists
        except ProcessLookupError:
            _received.pop(token, None)
        except (OSError, ValueError):
            pass  # alive but not ours to signal, or a token of another shape: keep it
