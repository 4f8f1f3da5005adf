# nbgrader_config.py for a llama-np course directory: copy it next to source/ (course/README.md,
# "Instructor's guide"). tests/test_nbgrader.py grades every lesson with exactly this file.
c = get_config()  # noqa: F821  (nbgrader defines get_config when it reads this file)

c.CourseDirectory.course_id = "llama-np"

# Autograding runs each submission top to bottom in a fresh kernel, from the course directory's
# autograded/<student>/<lesson>/ folder; the notebooks find their data through the installed
# `course` package, so install llama-np (pip install -e . from a clone) in the grading kernel's
# environment. A lesson runs in under 3 minutes on 2 cores: 600 s a cell is room, not a target.
c.Execute.timeout = 600
