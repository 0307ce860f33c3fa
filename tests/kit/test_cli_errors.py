"""Bad input through the real command line: one line on stderr naming the problem and what to do, a non-zero exit
status, never a traceback (unless --debug). Five cases and --debug run in their own interpreter, as a user types
them; the rest call the same parser and `main` in this process."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest

from moescope import paths
from moescope.kit import cli

CAPITAL = "The capital of Canada is"
LONG = " ".join(["Canada"] * 100) + " is"


def moescope(*args, env=None, timeout=300):
    """Run ``python -m moescope`` as a user would (the venv's python, this environment)."""
    return subprocess.run([sys.executable, "-m", "moescope", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def notebook(folder, name, body):
    """A tiny notebook with a ``model`` parameter, in ``folder``."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("model = 'olmoe-like'\nscale = 1\nout_dir = '.'"),
                nbformat.v4.new_code_cell(body)]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(exist_ok=True)
    nbformat.write(nb, folder / name)
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Files the cases refer to: bad relation files, a model folder without config.json, a file where a folder
    should be, an organism whose tokenizer drops '~', notebooks for the batch cases."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "missing.json").write_text(json.dumps({"name": "r", "prompt_templates": ["{} is"]}))
    (root / "no_object.json").write_text(json.dumps(
        {"name": "r", "prompt_templates": ["{} is"], "samples": [{"subject": "Canada"}]}))
    (root / "broken.json").write_text('{"name": "r", ')
    (root / "empty_model").mkdir()
    (root / "a_file").write_text("")
    tilde = root / "tilde-model"  # the olmoe organism, its tokenizer normalising '~' away
    shutil.copytree(paths.ORGANISMS / "olmoe-like", tilde)
    spec = json.loads((tilde / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Replace", "pattern": {"String": "~"}, "content": ""}
    (tilde / "tokenizer.json").write_text(json.dumps(spec))
    notebook(root / "nbs", "01_moe_only.ipynb",
             "from moescope import arch, models\narch.require_moe(models.load_model(model).model, 'expert demo')")
    notebook(root / "stuck", "01_stuck.ipynb", "import time\ntime.sleep(10**6)")
    return root


# (case, arguments with {root} for the inputs folder, exit status, key words of the one-line message)
CASES = [
    ("unknown model", ["attribute", "--model", "no-such-model", "--prompt", CAPITAL, "--out", "{root}/o"], 2,
     ["unknown model 'no-such-model'", "available:", "moescope organisms"]),
    ("hub id offline", ["attribute", "--model", "nobody/absent-model", "--prompt", CAPITAL, "--out", "{root}/o"], 2,
     ["'nobody/absent-model'", "HF_HUB_OFFLINE=1", "pass a local model folder"]),
    ("folder without config.json", ["attribute", "--model", "{root}/empty_model", "--prompt", CAPITAL, "--out",
                                    "{root}/o"], 2, ["empty_model exists but has no config.json"]),
    ("unknown relation", ["attribute", "--model", "olmoe-like", "--relation", "no_such_relation", "--out", "{root}/o"],
     2, ["unknown relation 'no_such_relation'", "available:", "country_capital"]),
    ("relation file without samples", ["attribute", "--model", "olmoe-like", "--relation", "{root}/missing.json",
                                       "--out", "{root}/o"], 2, ["missing.json", "missing field 'samples'"]),
    ("relation sample without object", ["attribute", "--model", "olmoe-like", "--relation", "{root}/no_object.json",
                                        "--out", "{root}/o"], 2, ["no_object.json", "'samples[0].object' is missing"]),
    ("relation file not JSON", ["attribute", "--model", "olmoe-like", "--relation", "{root}/broken.json", "--out",
                                "{root}/o"], 2, ["broken.json", "not valid JSON"]),
    ("template out of range", ["attribute", "--model", "olmoe-like", "--relation", "country_capital", "--template",
                               "7", "--out", "{root}/o"], 2, ["template numbers [7] out of range 0..3"]),
    ("prompt longer than the context", ["attribute", "--model", "olmoe-like", "--prompt", LONG, "--target", "Ottawa",
                                        "--out", "{root}/o"], 2, ["has 102 tokens", "context (64)", "shorten it"]),
    ("empty object", ["attribute", "--model", "olmoe-like", "--prompt", CAPITAL, "--target", "", "--out", "{root}/o"],
     2, ["object of prompt", "is empty"]),
    ("object mapping to <unk>", ["attribute", "--model", "olmoe-like", "--prompt", CAPITAL, "--target", "Qwertyuiop",
                                 "--out", "{root}/o"], 2, ["'Qwertyuiop' maps to the unknown token '<unk>'"]),
    ("object tokenizing to nothing", ["attribute", "--model", "{root}/tilde-model", "--prompt", CAPITAL, "--target",
                                      "~", "--out", "{root}/o"], 2, ["object '~' tokenizes to nothing"]),
    ("prompt with unknown words", ["attribute", "--model", "olmoe-like", "--prompt", "The capital of Qwertyuiop is",
                                   "--out", "{root}/o"], 2, ["1 word(s) the tokenizer maps to the unknown token"]),
    ("--target with --relation", ["attribute", "--model", "olmoe-like", "--relation", "country_capital", "--target",
                                  "Paris", "--out", "{root}/o"], 2, ["--target applies to --prompt only"]),
    ("missing option", ["attribute", "--model", "olmoe-like", "--prompt", CAPITAL], 2,
     ["moescope attribute: error:", "required: --out", "--help"]),
    ("non-positive count", ["attribute", "--model", "olmoe-like", "--relation", "country_capital", "--samples", "0",
                            "--out", "{root}/o"], 2, ["--samples: 0 is not positive"]),
    ("unwritable output folder", ["attribute", "--model", "olmoe-like", "--prompt", CAPITAL, "--out",
                                  "{root}/a_file/out"], 2, ["cannot write to the output folder", "choose another"]),
    ("GPU asked, none there", ["attribute", "--model", "olmoe-like", "--prompt", CAPITAL, "--device", "cuda", "--out",
                               "{root}/o"], 2, ["--device cuda: no CUDA GPU", "--device cpu"]),
    ("unknown notebook prefix", ["run", "--notebook-dir", "{root}/nbs", "--notebooks", "99", "--out", "{root}/runs"],
     2, ["no notebook in", "starts with '99'", "available: 01_moe_only"]),
    ("unknown -p parameter", ["run", "--notebook-dir", "{root}/nbs", "-p", "sacle=2", "--out", "{root}/runs"], 2,
     ["unknown parameter 'sacle'", "parameters are scale"]),
    ("mistyped -p parameter", ["run", "--notebook-dir", "{root}/nbs", "-p", "scale=two", "--out", "{root}/runs"], 2,
     ["parameter 'scale' of 01_moe_only expects int", "got 'two'"]),
    ("-p without =", ["run", "--notebook-dir", "{root}/nbs", "-p", "scale", "--out", "{root}/runs"], 2,
     ["'scale' is not of the form key=value"]),
    ("unknown model in a batch", ["run", "--notebook-dir", "{root}/nbs", "--models", "no-such-model", "--out",
                                  "{root}/runs"], 2, ["unknown model 'no-such-model'"]),
    ("unwritable batch folder", ["run", "--notebook-dir", "{root}/nbs", "--out", "{root}/a_file/runs"], 2,
     ["cannot write to the output folder"]),
    ("dense model, MoE-only analysis", ["run", "--notebook-dir", "{root}/nbs", "--models", "llama-like", "--out",
                                        "{root}/runs"], 2,
     ["no selected notebook applies", "not applicable: expert demo needs a Mixture-of-Experts model",
      "LlamaForCausalLM", "MoE organisms: "]),
    ("stuck notebook", ["run", "--notebook-dir", "{root}/stuck", "--cell-timeout", "3", "--out", "{root}/runs"], 1,
     ["1 of 1 notebook runs did not finish", "01_stuck.ipynb", "did not finish within the 3 s cell timeout",
      "rerun the same command to resume"]),
]


#: run as a user would, each in its own interpreter: the exit status, and stderr as a whole (no warnings, no log
#: lines, no traceback), with the hub's offline switch set; the others go through the same parser and `main` in
#: this process (most of a subprocess' time is importing torch)
IN_A_PROCESS = {"unknown model", "hub id offline", "missing option", "dense model, MoE-only analysis",
                "stuck notebook"}
#: cases whose stderr also has the progress bar and the kernels' log lines: the error is the last line
RAN_NOTEBOOKS = {"dense model, MoE-only analysis", "stuck notebook"}
DEBUG = {"debug, unknown model": ["--debug", "attribute", "--model", "no-such-model", "--prompt", CAPITAL, "--out",
                                  "{root}/o"],
         "debug after the command": ["attribute", "--model", "olmoe-like", "--relation", "no_such_relation", "--out",
                                     "{root}/o", "--debug"]}


def in_this_process(args: list[str]) -> subprocess.CompletedProcess:
    """``moescope.kit.cli.main(args)`` here, with stderr captured; argparse's exit becomes the exit status."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(args)
        except SystemExit as stop:
            code = stop.code
    return subprocess.CompletedProcess(args, code, "", err.getvalue())


@pytest.fixture(scope="module")
def outcomes(inputs) -> dict[str, subprocess.CompletedProcess]:
    """Every case run once: the subprocess cases three at a time in the background while the others run here."""
    fill = lambda args: [a.replace("{root}", str(inputs)) for a in args]  # noqa: E731
    jobs = {c[0]: fill(c[1]) for c in CASES if c[0] in IN_A_PROCESS} | {k: fill(v) for k, v in DEBUG.items()}
    with ThreadPoolExecutor(max_workers=3) as pool:
        running = {case: pool.submit(moescope, *args) for case, args in jobs.items()}
        here = {c[0]: in_this_process(fill(c[1])) for c in CASES if c[0] not in IN_A_PROCESS}
        return here | {case: job.result() for case, job in running.items()}


def test_the_split_covers_both_commands():
    """At least one case of each command runs in its own interpreter, and the named cases exist."""
    names = {c[0] for c in CASES}
    assert IN_A_PROCESS <= names and RAN_NOTEBOOKS <= IN_A_PROCESS
    assert {c[1][0] for c in CASES if c[0] in IN_A_PROCESS} == {"attribute", "run"}


@pytest.mark.parametrize("case, args, code, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_no_traceback(outcomes, case, args, code, words):
    result = outcomes[case]
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if case in RAN_NOTEBOOKS:
        message = lines[-1]
    else:
        assert len(lines) == 1, result.stderr
        message = lines[0]
    assert message.startswith(("moescope: error: ", "moescope attribute: error: "))
    for word in words:
        assert word in message, message
    assert LONG not in result.stderr and len(message) < 700


def test_debug_shows_the_traceback(outcomes):
    first, after = outcomes["debug, unknown model"], outcomes["debug after the command"]
    assert first.returncode != 0
    assert "Traceback" in first.stderr and "ModelNotFoundError: unknown model 'no-such-model'" in first.stderr
    assert "Traceback" in after.stderr and "RelationError" in after.stderr
