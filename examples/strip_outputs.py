"""Remove outputs, execution counts and run timings from notebooks, in place.

Why: the example notebooks are committed clean, so diffs show code and prose only, the
repository does not carry plots and logs, and a reader's first run is the one that
produces the numbers. Run it after working on a notebook in Jupyter or Colab;
``tests/test_notebooks.py`` fails on a committed notebook that still has outputs.

    python examples/strip_outputs.py                    # every examples/*.ipynb
    python examples/strip_outputs.py examples/01_quickstart.ipynb
    python examples/strip_outputs.py --check            # exit 1 if any has outputs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

EXAMPLES = Path(__file__).resolve().parent


def strip(nb: nbformat.NotebookNode) -> bool:
    """Clear ``nb``'s outputs, counts and timing metadata; ``True`` if anything changed."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code":
            if cell.outputs or cell.execution_count is not None:
                cell.outputs, cell.execution_count = [], None
                changed = True
        for key in ("execution", "collapsed", "scrolled"):
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path,
                        help="notebooks (default: examples/*.ipynb)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a notebook has outputs")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(EXAMPLES.glob("*.ipynb"))
    dirty = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if strip(nb):
            dirty.append(path)
            if not args.check:
                nbformat.write(nb, path)
    verb = "has outputs" if args.check else "stripped"
    for path in dirty:
        print(f"{path}: {verb}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
