"""The course tooling: solution notebooks -> student lessons, and the checks learners run.

    python -m course build [NN ...] [--check] [--execute]   # solutions/ -> lessons/
    python -m course execute NN [NN ...]                     # re-run a solution, store outputs
    python -m course check NN                                # run a lesson, report per exercise

``course.checkers`` holds the functions that check cells call (``check_function``,
``check_close``, ``check_equal``, ``check_dtype``). It imports only NumPy, so a notebook can use
it without Jupyter's tooling; the build and check commands import nbformat / nbclient lazily.
See course/README.md for the syllabus, the guides and the authoring rules.
"""
