"""The analysis of the ledger, as one import for the notebooks, tests and scripts: a facade.

The code lives in one module a concern; every public name is re-exported here, so
`from mainrun import analysis; analysis.load_results(...)` keeps working:

    formats        how numbers are written (fmt_loss, fmt_bpc, fmt_ratio, fmt_time, fmt_int)
    results        ledger queries: load_results, baselines, pauses, curves, LRs, study and ladder frames
    verdicts       statistics and judgements: compare, permutation_p, findings, coverage_check,
                   time_to_quality, curve_agreement, proxy_vs_full
    fragments      markdown tables and paragraphs for the report, notes for the notebooks
    report_inputs  write_report_inputs(profile): the report's figures, tables and numbers.json on disk

Nothing here trains. Import a name from its own module in new code; this module only re-exports.
"""
from __future__ import annotations

from .formats import fmt_bpc, fmt_int, fmt_loss, fmt_ratio, fmt_time
from .fragments import (BASELINE_FIELDS, DEVICE_NAME, NOT_SETTINGS, PROXY_NOTE, _findings_md, changes_table,
                        ladder_table, md_table, metric_notes, profile_note, results_table, run_status, show_config)
from .report_inputs import GPU_STUDIES, analysis_dir, gpu_section, write_report_inputs
from .results import (PAUSE_GAP_S, SUMMARY_FIELDS, baseline_hash, curves_of, ladder_frame, load_results,
                      optimizer_steps, paused_time, pauses, planned_schedule, read_curve, read_lr, read_studies,
                      run_dir, study_frame)
from .verdicts import (ABLATION_OF, NO_CHANGE, SAME_COVERAGE, compare, coverage_check, curve_agreement, findings,
                       gpu_study, permutation_p, proxy_vs_full, time_to_quality)
