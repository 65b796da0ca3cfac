"""Analysis of adaprec runs: load run directories into pandas, aggregate over seeds, draw paper
figures and write tables. ``python -m analysis.report runs/<sweep> --out <dir>`` does it all."""
from .figures import (flop_share_bars, fp16_rates, loss_scale_trace, precision_timeline,
                      quality_cost_scatter, save_figure, training_curves)
from .load import (find_run_dirs, load_decisions, load_evals, load_layers, load_runs, load_steps,
                   ok_runs)
from .prep import curve_table, rates_table, scale_table, share_table, switch_table, timeline_table
from .stats import aggregate, cost_columns, pareto_front, pareto_mask, t_interval, welch_tests
from .style import FORMAT_COLORS, controller_styles
from .tables import best_mask, summary_table, to_latex, to_markdown

__all__ = [
    # loading
    "find_run_dirs", "load_runs", "load_steps", "load_evals", "load_layers", "load_decisions",
    "ok_runs",
    # statistics
    "t_interval", "aggregate", "welch_tests", "pareto_mask", "pareto_front", "cost_columns",
    # figure-ready frames
    "curve_table", "share_table", "timeline_table", "rates_table", "scale_table", "switch_table",
    # figures
    "quality_cost_scatter", "precision_timeline", "fp16_rates", "training_curves",
    "flop_share_bars", "loss_scale_trace", "save_figure", "FORMAT_COLORS", "controller_styles",
    # tables
    "summary_table", "best_mask", "to_markdown", "to_latex",
]
