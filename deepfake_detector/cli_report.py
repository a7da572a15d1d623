"""The `report` command: rebuild a run's report.md from the files the run holds now.

Every command that adds to a run already rewrites its report (train, finetune, evaluate on the
run's own test split, robustness, cross-eval, gradcam into RUN/gradcam); this one is for a report
edited by hand, a run copied from elsewhere, or after a command that writes outside the run.
"""
from __future__ import annotations


def add_report(commands):
    p = commands.add_parser("report", help="rebuild a run's report.md from the files it holds")
    p.add_argument("--run", required=True, help="the run directory that train wrote")
    p.set_defaults(func=run_report)


def run_report(args):
    from .report import rebuild_report
    report = rebuild_report(args.run)
    print(f"report rebuilt: {report}")
    return report
