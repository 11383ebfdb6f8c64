"""results.checkpoints: the store side of checkpoints (no JAX): what is saved
comes back bitwise, generations, quarantine, and removal once committed."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from dmfjax.results import checkpoints, storage


def _saved(run_id: str, step: int, rng) -> checkpoints.Saved:
  arrays = [rng.standard_normal((4, 3)).astype(np.float32), np.asarray(step, np.int32),
            rng.standard_normal(()).astype(np.float64)]
  trajectory = [dict(run_id=run_id, step=s, step_train_loss=float(rng.random()),
                     step_singular_values=rng.random(3).tolist()) for s in range(0, step + 1, 50)]
  return checkpoints.Saved(run_id, step, arrays, trajectory)


def test_saved_runs_come_back_bitwise_and_two_generations_are_kept(tmp_path):
  rng = np.random.default_rng(0)
  store = checkpoints.Checkpoints(tmp_path, "s0of1")
  first = [_saved("a", 100, rng), _saved("b", 100, rng)]
  layout = checkpoints.layout_of(first[0].arrays)
  store.save("batch", first, layout)
  later = [_saved("a", 200, rng)]  # b finished meanwhile
  store.save("batch", later, layout)
  store.save("batch", [_saved("a", 300, rng)], layout)
  files = sorted((tmp_path / "checkpoints" / "s0of1").iterdir())
  assert [f.name for f in files] == ["batch-000002.arrow", "batch-000003.arrow"]
  found = checkpoints.Checkpoints(tmp_path, "other").load(["a", "b", "c"], layout)
  assert set(found) == {"a"} and found["a"].step == 300  # b's checkpoint went with gen 1
  again = checkpoints.Checkpoints(tmp_path, "other").load(["a"], layout)["a"]
  for x, y in zip(again.arrays, found["a"].arrays):
    assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
  store.discard("batch")
  assert not list((tmp_path / "checkpoints").rglob("*.arrow"))


def test_the_exact_values_and_rows_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  saved = _saved("r", 150, rng)
  layout = checkpoints.layout_of(saved.arrays)
  checkpoints.Checkpoints(tmp_path, "w").save("k", [saved], layout)
  back = checkpoints.Checkpoints(tmp_path, "w").load(["r"], layout)["r"]
  assert back.step == 150
  for x, y in zip(back.arrays, saved.arrays):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
  assert [r["step"] for r in back.trajectory] == [0, 50, 100, 150]
  assert [r["step_train_loss"] for r in back.trajectory] == [
      r["step_train_loss"] for r in saved.trajectory]
  assert back.trajectory[1]["step_singular_values"] == saved.trajectory[1]["step_singular_values"]


def test_a_truncated_file_is_quarantined_with_a_warning(tmp_path):
  rng = np.random.default_rng(2)
  saved = _saved("r", 100, rng)
  layout = checkpoints.layout_of(saved.arrays)
  store = checkpoints.Checkpoints(tmp_path, "w")
  store.save("k", [saved], layout)
  store.save("k", [_saved("r", 200, rng)], layout)
  newest = tmp_path / "checkpoints" / "w" / "k-000002.arrow"
  newest.write_bytes(newest.read_bytes()[:-100])
  with pytest.warns(checkpoints.CheckpointWarning, match="unreadable checkpoint"):
    found = checkpoints.Checkpoints(tmp_path, "w").load(["r"], layout)
  assert found["r"].step == 100  # the generation before
  assert not newest.exists() and list((tmp_path / "_quarantine").glob("*.why.txt"))


def test_remove_obsolete_keeps_files_with_unfinished_runs(tmp_path):
  rng = np.random.default_rng(3)
  saved = [_saved("a", 10, rng), _saved("b", 10, rng)]
  layout = checkpoints.layout_of(saved[0].arrays)
  checkpoints.Checkpoints(tmp_path, "w1").save("k", saved, layout)
  checkpoints.Checkpoints(tmp_path, "w2").save("k", saved[:1], layout)
  stale = tmp_path / "checkpoints" / "w1" / ".tmp-0123"
  stale.write_bytes(b"half a put")
  old = time.time() - storage.STALE_TMP_S - 1
  os.utime(stale, (old, old))
  assert checkpoints.remove_obsolete(tmp_path, {"a"}) == dict(removed=1, kept=1)
  assert not stale.exists()
  assert checkpoints.remove_obsolete(tmp_path, lambda: {"a", "b"}) == dict(removed=1, kept=0)
