"""requirements.txt and environment.yml carry the same pins; torch is pinned."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pins(lines):
    return {l.split("==")[0].lower(): l.split("==")[1] for l in lines if "==" in l}


def test_conda_and_pip_pins_agree():
    req = _pins(l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines() if not l.startswith("#"))
    env = _pins(l.strip().removeprefix("- ") for l in (ROOT / "environment.yml").read_text().splitlines())
    assert req == env
    assert req["torch"] == "2.13.0"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make reproduce" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
