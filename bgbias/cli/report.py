"""``bgbias report``: one self-contained HTML page (+ results.json) from eval/challenge/saliency/metrics/eval-detect
JSON."""
from __future__ import annotations


def report_command(args) -> int:
    from bgbias.core.io import check_writable
    from bgbias.report.write import write_report

    check_writable(args.out)   # before the figures, not after them

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    results = write_report(args.inputs, args.out, results_path=args.results, figures_dir=args.figures,
                           names=names, data=args.data, title=args.title)
    for m in results["models"]:
        print(m["summary"])
    print(f"Report: {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="write an HTML report (+ results.json) from result JSON files",
                       description="Combine eval.json, challenge.json, saliency.json, metrics.json, eval-detect "
                                   "JSON and a build's manifest.json (any subset, any number of models) into one "
                                   "HTML page.")
    p.add_argument("inputs", nargs="+", metavar="FILE.json", help="result files; models are grouped by their spec")
    p.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument("--results", default=None, help="combined JSON (default: results.json next to --out)")
    p.add_argument("--figures", default=None, metavar="DIR", help="also save each figure as DIR/<name>.png")
    p.add_argument("--names", default=None, help="comma-separated display names, one per model in input order")
    p.add_argument("--data", default=None, metavar="DIR", help="build folder for example images (default: "
                                                              "next to manifest.json, or the results' data)")
    p.add_argument("--title", default="bgbias report", help="page title")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=report_command)
