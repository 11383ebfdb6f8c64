"""Writes the small data files that the follow-up specs read (run once; the
files are committed next to this script).

    python experiments/_make_data.py
"""

import pathlib

import numpy as np

HERE = pathlib.Path(__file__).parent


def main():
  # Razin & Cohen (2020): 2 x 2 completion, (0,1) = 1, (1,0) = 1, (1,1) = 0
  # observed, (0,0) unobserved.
  np.savez(HERE / "razin_2x2.npz", mask=np.array([[0.0, 1.0], [1.0, 1.0]]),
           observed=np.array([[0.0, 1.0], [1.0, 0.0]]))
  # Gissin, Shalev-Shwartz & Daniely (2020): W* = diag(12, 6, 4, 3), 50 x 50.
  w_star = np.zeros((50, 50))
  w_star[range(4), range(4)] = [12.0, 6.0, 4.0, 3.0]
  np.save(HERE / "gissin_diag.npy", w_star)
  # Gunasekar et al. (2017), Arora et al. (2019) section 2: symmetric commuting
  # (diagonal) measurement matrices A_i = diag(a_i), a_i ~ N(0, 1); W* PSD
  # diagonal of rank 2; fewer measurements (6) than unknowns on the diagonal (10).
  rng = np.random.default_rng(0)
  n, k = 10, 6
  a = np.stack([np.diag(v) for v in rng.standard_normal((k, n))])
  w_star = np.diag([2.0, 1.0] + [0.0] * (n - 2))
  np.savez(HERE / "commuting_diag.npz", a=a, y=np.einsum("kij,ij->k", a, w_star),
           w_star=w_star)


if __name__ == "__main__":
  main()
