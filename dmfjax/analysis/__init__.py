"""Analysis: from the results tables to the numbers behind figures, the
figures and the report.

Everything here reads only the store's tables (``dmfjax.results``) and
returns pandas DataFrames, figures or files, so a notebook session looks
like::

    from dmfjax import analysis
    runs = analysis.load_runs("results/fig1", problem="completion")
    analysis.error_vs_observations(runs)        # tidy: depth, n_obs, mean, std...
    analysis.depth_comparison(runs)              # the quick-start table
    analysis.write_report(["results/fig1"], "results/fig1/report")

It imports ``dmfjax.results`` and the base modules, and ``dmfjax.core`` only
for the theory checks of the report (on demand); never the sweep engine or
the command line, and matplotlib only when something is drawn.

Modules:

* ``tables``          -- loading, selecting, curves over seeds, recovery, the depth table
* ``dynamics``        -- tables over training steps (singular values, alignment)
* ``plotting``        -- the figures' shared style
* ``figures``         -- the paper's figures
* ``training_plots``  -- figures over training steps: learning curves, singular values, alignment
* ``recovery_thresholds`` -- a search's thresholds table, its figures and report section
* ``report``, ``report_doc`` -- the report (Markdown and self-contained HTML)
"""

from dmfjax.analysis import dynamics, report, tables
from dmfjax.analysis.dynamics import (
                                      alignment_table,
                                      half_target_steps,
                                      learning_curves,
                                      singular_value_table,
                                      tracked_vs_loss,
)
from dmfjax.analysis.report import write_report
from dmfjax.analysis.recovery_thresholds import plot_phase_boundary, plot_threshold
from dmfjax.analysis.recovery_thresholds import report_figures as threshold_figures
from dmfjax.analysis.recovery_thresholds import thresholds
from dmfjax.analysis.tables import (
                                      CONFIG_COLUMNS,
                                      SEED_COLUMNS,
                                      STAT_COLUMNS,
                                      STATUSES,
                                      baseline_levels,
                                      curve,
                                      curve_with_status,
                                      depth_comparison,
                                      error_vs_init_scale,
                                      error_vs_observations,
                                      join_config,
                                      load_manifest,
                                      load_manifests,
                                      load_runs,
                                      load_trajectories,
                                      matches,
                                      recovery_fraction,
                                      recovery_grid,
                                      representative_runs,
                                      select,
                                      varying_columns,
)

__all__ = [
    # loading
    "load_runs", "load_trajectories", "load_manifests", "load_manifest", "join_config",
    # selecting
    "select", "matches", "varying_columns",
    # statistics over seeds
    "curve", "curve_with_status", "error_vs_observations", "error_vs_init_scale",
    "depth_comparison", "recovery_fraction", "recovery_grid", "baseline_levels",
    "representative_runs",
    # over training steps
    "singular_value_table", "alignment_table", "learning_curves", "half_target_steps",
    "tracked_vs_loss",
    # recovery thresholds (a search's table and figures)
    "thresholds", "plot_threshold", "plot_phase_boundary", "threshold_figures",
    # the report
    "write_report",
    # column groups
    "CONFIG_COLUMNS", "SEED_COLUMNS", "STATUSES", "STAT_COLUMNS",
    # modules
    "dynamics", "report", "tables",
]
