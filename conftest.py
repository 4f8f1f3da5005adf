"""Repository-wide pytest set-up."""


def pytest_configure(config):
    # On a fresh machine the first `import matplotlib.pyplot` builds the font cache and says so on
    # stderr; inside a notebook kernel nbval would read that as a changed output. Build it here,
    # once, before any kernel starts.
    try:
        import matplotlib.font_manager  # noqa: F401
    except ImportError:
        pass
