"""Batch sizes and repacking, as pure functions of host arrays."""

import numpy as np
import pytest

from dmfjax.core import train
from dmfjax.sweep import batching

R, C, B, D = train.RUNNING, train.CONVERGED, train.BUDGET, train.DIVERGED


@pytest.mark.parametrize("count, devices, padded, bucket", [
    (1, 1, 1, 1), (3, 1, 3, 4), (5, 1, 5, 8), (8, 1, 8, 8), (9, 1, 9, 16),
    (3, 4, 4, 4), (5, 4, 8, 8), (9, 4, 12, 16), (0, 2, 0, 2)])
def test_padded_and_bucket_sizes(count, devices, padded, bucket):
  assert batching.padded(count, devices) == padded
  assert batching.bucket(count, devices) == bucket


def test_batch_goes_on_while_runs_do_not_fit_a_smaller_bucket():
  slots = [0, 1, 2, 3]
  r = batching.repack(slots, [R, R, C, R], [10, 10, 7, 10], [100] * 4, 1)
  assert r == batching.Repack(done=(), take=None, slots=(0, 1, 2, 3), ends=False)


def test_shrinks_into_the_next_bucket_and_writes_the_stopped():
  slots = [0, 1, 2, 3, 4, 5, 6, 7]
  status = [C, R, D, C, R, B, C, R]
  r = batching.repack(slots, status, [5] * 8, [100] * 8, 1)
  assert r.done == (0, 2, 3, 5, 6) and not r.ends
  # Three running runs -> a bucket of 4: the running slots, then one filler
  # (a copy of the first stopped slot; padding, never written).
  assert r.take == (1, 4, 7, 0)
  assert r.slots == (1, 4, 7, None)


def test_a_run_at_its_budget_counts_as_stopped():
  r = batching.repack([0, 1], [R, R], [50, 20], [50, 100], 1)
  assert r.done == (0,) and r.take == (1,) and r.slots == (1,)


def test_ends_when_nothing_runs_or_on_stop():
  done = batching.repack([0, 1, None], [C, D, R], [3, 4, 0], [9, 9, 0], 1)
  assert done.ends and done.done == (0, 1) and done.take is None
  stop = batching.repack([0, 1, 2, 3], [R, C, R, R], [3] * 4, [9] * 4, 1, stop=True)
  assert stop.ends and stop.done == (1,)


def test_padding_slots_are_neither_running_nor_written():
  # Two devices: 3 runs padded to 4; one stops -> 2 running fit a bucket of 2.
  r = batching.repack([0, 1, 2, None], [R, C, R, R], [4] * 4, [9, 9, 9, 0], 2)
  assert r.done == (1,) and r.take == (0, 2) and r.slots == (0, 2)
  # Sizes stay multiples of the device count.
  r = batching.repack([0, 1, 2, 3, 4, 5, None, None], [R, C, C, C, C, C, R, R],
                      [4] * 8, [9] * 6 + [0, 0], 2)
  assert r.take == (0, 1) and r.slots == (0, None)


def test_no_repack_writes_only_at_the_end():
  r = batching.repack([0, 1, 2, 3], [C, C, C, R], [3] * 4, [9] * 4, 1, enabled=False)
  assert r.done == () and not r.ends
  r = batching.repack([0, 1, 2, 3], [C, C, C, C], [3] * 4, [9] * 4, 1, enabled=False)
  assert r.done == (0, 1, 2, 3) and r.ends
  assert isinstance(np.asarray(r.done), np.ndarray)
