"""python -m course {build,execute,check,site,grades} ...  (see course/README.md)"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .notebooks import LESSONS, SOLUTIONS, CourseError, find_notebook, notebook_paths


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m course",
                                description="Build student lessons from solution notebooks and check them.")
    sub = p.add_subparsers(dest="command", required=True)

    def dirs(sp):
        sp.add_argument("--solutions", type=Path, default=SOLUTIONS, help="solution notebooks (default: solutions/)")
        sp.add_argument("--lessons", type=Path, default=LESSONS, help="student notebooks (default: lessons/)")

    b = sub.add_parser("build", help="make lessons/NN_name.ipynb from solutions/NN_name.ipynb")
    b.add_argument("lessons_to_build", nargs="*", metavar="NN", help="lesson numbers or names (default: all)")
    b.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 naming every lesson that is out of date")
    b.add_argument("--execute", action="store_true",
                   help="first re-run each solution in a fresh kernel to refresh its stored outputs")
    b.add_argument("--timeout", type=int, default=600, help="seconds per cell for --execute (default 600)")
    dirs(b)

    e = sub.add_parser("execute", help="re-run solution notebooks in a fresh kernel, store outputs, rebuild lessons")
    e.add_argument("lessons_to_build", nargs="+", metavar="NN")
    e.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    dirs(e)

    c = sub.add_parser("check", help="run a lesson and report, exercise by exercise, what is still wrong")
    c.add_argument("lesson", metavar="NN", help="lesson number or name, or a path to a notebook")
    c.add_argument("--solution", action="store_true", help="check the solution notebook instead (authors)")
    c.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    c.add_argument("--check-timeout", type=int, default=60,
                   help="seconds per exercise or check cell (default 60): a slower answer is reported, not waited for")
    c.add_argument("--keep-going", action="store_true",
                   help="run the cells after the first failing exercise too (their failures may only repeat it)")
    c.add_argument("--sanitize", type=Path, default=None,
                   help="nbval sanitize file (default: course/nbval_sanitize.cfg)")
    dirs(c)

    s = sub.add_parser("site", help="render the notebooks (with stored outputs) and the guides as a static site")
    s.add_argument("--out", type=Path, default=None, help="output folder (default: build/site)")

    g = sub.add_parser("grades", help="after nbgrader autograde: scores, and the submissions that did not run")
    g.add_argument("assignment", help="the assignment (lesson) name, e.g. 02_rmsnorm")
    g.add_argument("--course-dir", type=Path, default=Path("."), help="nbgrader course directory (default: .)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "grades":
            from .grading import report
            return report(args.course_dir, args.assignment)
        if args.command == "site":
            from .site import DEFAULT_OUT, main as site
            return site(args.out or DEFAULT_OUT)
        if args.command == "check":
            from .check import check
            folder = args.solutions if args.solution else args.lessons
            if args.timeout < 1 or args.check_timeout < 1:
                raise CourseError("--timeout and --check-timeout must be at least 1 second")
            return check(find_notebook(args.lesson, folder), timeout=args.timeout, sanitize=args.sanitize,
                         check_timeout=args.check_timeout, keep_going=args.keep_going)

        from .build import build, execute, orphan_lessons
        specs = args.lessons_to_build
        solutions = [find_notebook(s, args.solutions) for s in specs] if specs else notebook_paths(args.solutions)
        if not solutions and (args.command == "execute" or args.execute or not args.check):
            raise CourseError(f"no solution notebooks (NN_name.ipynb) in {args.solutions}")
        if args.command == "execute" or args.execute:
            for sp in solutions:
                if execute(sp, timeout=args.timeout):
                    return 1
        check_only = args.command == "build" and args.check
        orphans = orphan_lessons(args.solutions, args.lessons) if check_only and not specs else []
        return build(solutions, args.lessons, check=check_only, orphans=orphans)
    except CourseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:   # the course tools need the dev extra (nbformat, nbclient, nbval)
        print(f"error: {e.name} is not installed: run pip install -e \".[dev]\" first", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
