"""Shared fixtures for the core-engine tests."""

import pathlib

import jax
import pytest

DATA_DIR = pathlib.Path(__file__).parent / "data"


@pytest.fixture
def x64():
  """float64 inside the test only (other test files expect float32 defaults)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture
def small_ratings_path():
  """A synthetic MovieLens-format file: 12 users x 9 items, 60 ratings."""
  return DATA_DIR / "u.data.small"
