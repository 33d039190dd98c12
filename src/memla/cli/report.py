"""`memla report`: paper-style tables, heatmaps and an HTML page from a `memla bench` run.

Example::

    memla report runs/mkeb-mini --format md,html
"""

from __future__ import annotations

import argparse

from memla.cli._common import console, print_table

ORDER = 60


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``memla report`` to the top-level parser.

    Args:
        subparsers: the top-level sub-parser collection.
    """
    p = subparsers.add_parser(
        "report",
        help="tables (Markdown, CSV, JSON, LaTeX), heatmaps and an HTML report of a bench run",
        description="Summarise a `memla bench` run: ES / PS / NS per source-target cell and the "
        "cross-lingual average (paper Tables 3/4), the monolingual / average view (Table 5), "
        "multi-hop QS (Table 6), ls x lt heatmaps, timings and skipped cells. The console shows "
        "values only; the files add standard errors.",
    )
    p.add_argument("run", help="the --out folder of `memla bench`")
    p.add_argument("--format", default="all",
                   help="comma-separated subset of md,csv,json,latex,html,png, or 'all' (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/report)")
    p.add_argument("--quiet", action="store_true", help="do not print the tables")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the report files and print the main tables; returns the exit status."""
    from memla.report import build_report, parse_formats, write_report
    from memla.report.tables import fmt

    from memla.outputs import check_out_dir

    formats = parse_formats(args.format)
    if args.out is not None:
        check_out_dir(args.out, option="--out", overwrite=True)  # a report folder is rewritten file by file
    report = build_report(args.run)
    if not args.quiet:
        for table in report.tables:
            print_table(table.title, table.columns, [[fmt(c, se=False) for c in row] for row in table.rows])
    written = write_report(args.run, formats=formats, out_dir=args.out, report=report)
    for fmt_name, paths in written.items():
        if paths:
            shown = str(paths[0].parent / "*.png") if fmt_name == "png" and len(paths) > 1 else ", ".join(map(str, paths))
            console.print(f"{fmt_name}: {shown}")
    return 0
