"""The built wheel, not the editable checkout, trains and predicts.

Why: users install with a plain ``pip install``; an editable install hides packaging
mistakes (a subpackage left out of ``find:``, a missing data file, a broken console
script). This test builds the wheel from the repository, installs it with ``--no-deps``
into a new venv whose only other path is the dependencies of the test's own environment
(a ``.pth`` line: no ``.pth`` files of that environment run, so its editable finder for
``tfrec_p5`` is not active), and runs ``tfrec-p5 train`` and ``predict`` from that venv in
a folder outside the repository. The full install with dependency resolution in an empty
venv is ``benchmarks/wheel_install.py`` (it downloads TensorFlow, so it is not a test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None,
         timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args[:3]} exited {proc.returncode}:\n" \
        f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
          str(root / "dist"), str(REPO)], cwd=root)
    wheels = list((root / "dist").glob("tfrec_p5-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "--quiet", str(wheels[0])], cwd=root)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                         "['purelib'])"], cwd=root).stdout.strip())
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def test_the_wheel_carries_every_module_and_is_what_runs(wheel_venv):
    wheel = next((wheel_venv.parent / "dist").glob("tfrec_p5-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        packed = sorted(n for n in zf.namelist() if n.endswith(".py"))
    in_repo = sorted(str(p.relative_to(REPO)) for p in (REPO / "tfrec_p5").rglob("*.py"))
    assert packed == in_repo, sorted(set(packed) ^ set(in_repo))
    python = wheel_venv / "bin" / "python"
    where = _run([str(python), "-c", "import tfrec_p5; print(tfrec_p5.__file__)"],
                 cwd=wheel_venv.parent, env=_env()).stdout.strip()
    assert Path(where).is_relative_to(wheel_venv), where  # not the repository's copy


def test_the_installed_command_trains_and_predicts(wheel_venv):
    cli = wheel_venv / "bin" / "tfrec-p5"
    out = wheel_venv.parent / "model"
    work = wheel_venv.parent
    _run([str(cli), "train", "--task", "rating", "--data",
          "synthetic?num_users=200&num_items=100&num_interactions=5000", "--epochs", "1",
          "--quiet", "--out", str(out)], cwd=work, env=_env())
    proc = _run([str(cli), "predict", "--model", str(out), "--user", "u1", "--item", "i1",
                 "--json"], cwd=work, env=_env())
    answer = json.loads(proc.stdout)
    assert answer["user_id"] == "u1" and answer["item_id"] == "i1"
    assert 0.0 < answer["rating"] < 6.0  # synthetic ratings are 1..5
