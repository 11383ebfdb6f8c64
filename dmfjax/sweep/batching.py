"""Batch sizes, chunk lengths and repacking: pure functions of host integers and arrays.

A batch of B runs is advanced chunk by chunk. Its size is padded to a
multiple of the number of devices D (the run axis is sharded over them). When
some runs stop, keeping them in the batch costs compute for nothing, so once
the running runs fit a smaller *bucket* (a power of two times D) the batch is
repacked: the stopped runs are finalized and written, the running ones are
gathered into the smaller batch. Bucket sizes repeat, so a shape seen once is
never compiled again.

A batch is advanced in chunks of equal length (a compiled program per
length), so the steps a batch executes are a multiple of its chunk length:
:func:`chunk_periods` divides a group's longest budget into equal chunks, each
a whole number of log periods, so that a short sweep does not run a whole
default-length chunk for a few steps; by default (:func:`chunk_target`) a
chunk is also at most ~1/40 of the budget, so that runs stopping early inside
a chunk waste few steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from dmfjax.core.train import RUNNING


def padded(count: int, num_devices: int) -> int:
  """The smallest multiple of ``num_devices`` holding ``count`` runs."""
  return num_devices * math.ceil(count / num_devices)


def bucket(count: int, num_devices: int) -> int:
  """The smallest power of two times ``num_devices`` holding ``count`` runs."""
  per_device = math.ceil(count / num_devices)
  return num_devices * (1 << max(0, per_device - 1).bit_length())


# The automatic chunk (a spec's ``chunk_steps=None``): at most DEFAULT_CHUNK_STEPS
# and about 1 / CHUNKS_PER_BUDGET of the group's budget. A run that stops inside
# a chunk leaves its slot computing frozen steps until the chunk ends (half a
# chunk on average), so a chunk of budget / 40 costs a run that stops at a
# fraction f of its budget ~1.25% / f extra steps: 2.5% at half the budget.
DEFAULT_CHUNK_STEPS = 5000
CHUNKS_PER_BUDGET = 40


def chunk_target(budget: int, period: int, chunk_steps: Optional[int]) -> int:
  """The most steps per chunk: ``chunk_steps``, or when None the automatic
  ``min(DEFAULT_CHUNK_STEPS, max(period, ceil(budget / CHUNKS_PER_BUDGET)))``."""
  if chunk_steps is not None:
    return chunk_steps
  return min(DEFAULT_CHUNK_STEPS, max(period, math.ceil(budget / CHUNKS_PER_BUDGET)))


def chunk_periods(budget: int, period: int, target: int) -> tuple[int, int]:
  """(log periods per chunk p, chunks c) for runs of at most ``budget`` steps.

  A chunk is p periods of ``period`` steps (``log_every``) and at most
  ``target`` steps when a period fits in it (else one period). The q =
  ceil(budget / period) periods needed are cut into c >= c0 = ceil(q / p_max)
  chunks of p = ceil(q / c) periods, c in [c0, 4 c0] (at most 1000 candidates)
  chosen to minimize the executed steps c p period (the fewest chunks among
  equals). With c = c0 alone, c p - q can reach c - 1 periods (20% at period
  1000, target 5000); the search finds an exact or near-exact split (<= 1.1 q
  periods for q >= 10). The rest, up to one period, is the budget rounded up
  to whole log periods.
  """
  q = max(1, math.ceil(budget / period))
  c0 = math.ceil(q / max(1, target // period))
  candidates = range(c0, c0 + min(3 * c0, 1000) + 1)  # bounded work for huge budgets
  c = min(candidates, key=lambda c: (c * math.ceil(q / c), c))
  return math.ceil(q / c), c


@dataclasses.dataclass(frozen=True)
class Repack:
  """What to do with a batch after a chunk.

  Attributes:
    done: slots whose runs stopped, to finalize and write now (empty when the
      batch goes on unchanged).
    take: the slots of the current batch that form the next one, in order
      (running runs first, then fillers); None when the batch ends (nothing
      left running, or a stop was requested) or goes on unchanged.
    slots: the run index of each slot of the next batch (None: padding).
    ends: whether the batch ends now.
  """
  done: tuple
  take: Optional[tuple]
  slots: tuple
  ends: bool


def repack(slots: Sequence[Optional[int]], status, steps, max_steps, num_devices: int,
           enabled: bool = True, stop: bool = False) -> Repack:
  """Decides, after a chunk, which runs to write and how to shrink the batch.

  Args:
    slots: per slot of the batch, the index of its run (None: padding).
    status, steps: per slot, the run's status (RUNNING = 0) and updates
      applied, as read after the chunk.
    max_steps: per slot, the run's step budget (ignored for padding).
    num_devices: D; batch sizes are multiples of it.
    enabled: repack into smaller buckets (else only write when the batch ends).
    stop: a stop was requested: write what stopped and end the batch.

  Returns:
    A :class:`Repack`. A run counts as running while its status is RUNNING
    and it has budget left; the batch shrinks when the running runs fit a
    smaller bucket; the slots that fill the new bucket beyond the running runs
    are copies of a stopped slot (their results are never written).
  """
  status, steps, max_steps = (np.asarray(a) for a in (status, steps, max_steps))
  real = [s for s, i in enumerate(slots) if i is not None]
  running = [s for s in real if status[s] == RUNNING and steps[s] < max_steps[s]]
  done = tuple(s for s in real if s not in running)
  size = len(slots)
  new_size = bucket(len(running), num_devices) if running else 0
  if not running or stop:
    return Repack(done=done, take=None, slots=tuple(slots), ends=True)
  if not (enabled and new_size < size):
    return Repack(done=(), take=None, slots=tuple(slots), ends=False)
  filler = next((s for s in range(size) if s not in running), running[0])
  take = tuple(running) + (filler,) * (new_size - len(running))
  new_slots = tuple(slots[s] for s in running) + (None,) * (new_size - len(running))
  return Repack(done=done, take=take, slots=new_slots, ends=False)
