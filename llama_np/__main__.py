"""``python -m llama_np ...``: see ``llama_np.cli``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
