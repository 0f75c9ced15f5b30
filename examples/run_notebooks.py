"""Execute the example notebooks top to bottom, a few at a time, and report any error.

Why a script: ``make notebooks`` runs them at full size for a reader who wants every plot
and number, and ``tests/test_notebooks.py`` runs the same code in quick mode
(``--small`` sets ``TFREC_P5_SMALL=1``: tiny data, one or two epochs), so a notebook that
stops working fails the test suite instead of a reader's afternoon. Each notebook runs in
its own kernel (the ``python3`` kernel of the Python running this script) with its own
working folder under ``--out`` (its ``saved_models/`` land there, never in the
repository), and the executed copy, outputs included, is written next to it.

    python examples/run_notebooks.py                            # all, full size -> build/notebooks/
    python examples/run_notebooks.py --small --jobs 2           # what the tests run
    python examples/run_notebooks.py 07_serving.ipynb --data movielens:/data/ml-100k

The committed notebooks carry no outputs: ``python examples/strip_outputs.py`` removes them
after you have run a notebook in place.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parent
DEFAULT_OUT = EXAMPLES.parent / "build" / "notebooks"


@dataclass
class Result:
    """One executed notebook: its name, wall seconds, the executed copy and any error."""

    name: str
    seconds: float
    output: Path
    error: str | None = None


def notebooks(names: Iterable[str] = ()) -> list[Path]:
    """The example notebooks named (file names, stems or number prefixes like ``01``),
    default all, in order."""
    every = sorted(EXAMPLES.glob("[0-9][0-9]_*.ipynb"))
    wanted = [Path(n).stem for n in names]
    if not wanted:
        return every
    found = {n: [p for p in every if p.stem == n or p.stem.startswith(n + "_")]
             for n in wanted}
    missing = [n for n, hits in found.items() if len(hits) != 1]
    if missing:
        raise SystemExit(f"no such notebook: {', '.join(missing)}; have "
                         f"{', '.join(p.stem for p in every)}")
    return [found[n][0] for n in wanted]


def kernel_env(small: bool, data: str | None = None,
               extra: Mapping[str, str] | None = None,
               drop: Iterable[str] = ()) -> dict[str, str]:
    """The kernels' environment: ours without ``drop``, plus quick mode, the data spec and
    quiet TF logs."""
    env = {k: v for k, v in os.environ.items() if k not in set(drop)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("JUPYTER_PLATFORM_DIRS", "1")  # silences jupyter_core's path notice
    if small:
        env["TFREC_P5_SMALL"] = "1"
    else:
        env.pop("TFREC_P5_SMALL", None)
    if data:
        env["TFREC_P5_DATA"] = data
    env.update(extra or {})
    return env


async def _run_one(path: Path, out_dir: Path, env: dict[str, str], timeout: int,
                   gate: asyncio.Semaphore) -> Result:
    async with gate:
        nb = nbformat.read(path, as_version=4)
        workdir = out_dir / path.stem
        workdir.mkdir(parents=True, exist_ok=True)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(workdir)}})
        started = time.perf_counter()
        error = None
        try:
            await client.async_execute(env=env)
        except Exception as err:  # noqa: BLE001  CellExecutionError, kernel death, timeout
            error = f"{type(err).__name__}: {err}"
        output = out_dir / path.name
        nbformat.write(nb, output)
        return Result(path.name, time.perf_counter() - started, output, error)


def run(paths: Iterable[Path], out_dir: str | os.PathLike = DEFAULT_OUT, *, jobs: int = 2,
        small: bool = False, data: str | None = None, timeout: int | None = None,
        env: Mapping[str, str] | None = None, drop_env: Iterable[str] = ()) -> list[Result]:
    """Execute ``paths``, ``jobs`` at a time; one ``Result`` per notebook, in order.

    ``timeout`` is per cell (default 600 s in quick mode, none at full size); ``env`` is
    added to and ``drop_env`` removed from the kernels' environment.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timeout = timeout if timeout is not None else (600 if small else -1)
    kenv = kernel_env(small, data, env, drop_env)

    async def main() -> list[Result]:
        gate = asyncio.Semaphore(max(1, jobs))
        return list(await asyncio.gather(*(_run_one(p, out_dir, kenv, timeout, gate)
                                           for p in paths)))
    return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook names (default: all)")
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="folder for executed copies and working folders")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks run at once")
    parser.add_argument("--small", action="store_true", help="quick mode (TFREC_P5_SMALL=1)")
    parser.add_argument("--data", help="data spec for every notebook (TFREC_P5_DATA)")
    parser.add_argument("--timeout", type=int, help="seconds per cell")
    args = parser.parse_args(argv)
    results = run(notebooks(args.notebooks), args.out, jobs=args.jobs, small=args.small,
                  data=args.data, timeout=args.timeout)
    for r in results:
        print(f"{'FAILED' if r.error else 'ok':>6}  {r.seconds:7.1f} s  {r.name}  -> {r.output}")
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"\n=== {r.name} ===\n{r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
