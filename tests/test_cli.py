"""The console script (run as a subprocess: exit codes, output) and the README's commands."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import illada_rt

ROOT = Path(__file__).resolve().parents[1]


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "illada_rt.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=300)


def test_generate_ids(checkpoints):
    r = run("generate", "5,6,7", "--ids", "--model", str(checkpoints["llada_mha"]), "--gen-length", "8",
            "--steps", "8", "--block-length", "4")
    assert r.returncode == 0, r.stderr
    toks = [int(t) for t in r.stdout.split()]
    g = illada_rt.load(checkpoints["llada_mha"]).generate([[5, 6, 7]], gen_length=8, steps=8, block_length=4)
    assert toks == g.generated[0].tolist()


def test_generate_json_and_stdin(checkpoints):
    r = run("generate", "--ids", "--model", str(checkpoints["llama_gqa_tied"]), "--mask-id", "100",
            "--gen-length", "8", "--steps", "4", "--block-length", "8", "--json", stdin="1 2 3\n")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompt_ids"] == [1, 2, 3] and len(out["tokens"]) == 8 and out["nfe"] == 4
    assert out["text"] is None and out["timings"]["generate_s"] > 0


def test_default_model_text_is_deterministic():
    r = run("generate", "And God said", "--gen-length", "32", "--steps", "32", "--block-length", "32", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    g = illada_rt.load().generate("And God said", gen_length=32, steps=32, block_length=32)
    assert out["text"] == g.text and out["tokens"] == g.generated[0].tolist()
    assert len(out["text"].split()) >= 3


def test_visual_to_a_pipe_does_not_crash():
    r = run("generate", "In the beginning", "--visual", "--gen-length", "16", "--steps", "8", "--block-length", "16")
    assert r.returncode == 0, r.stderr
    assert "step 8" in r.stderr          # the last frame is printed when stderr is not a terminal
    assert r.stdout.strip()              # and the text on stdout


@pytest.mark.parametrize("args,code,needle", [
    (["generate", "x", "--model", "/nonexistent/dir"], 1, "does not exist"),
    (["generate", "x", "--block-length", "5"], 2, "must divide"),
    (["generate", "1,x", "--ids"], 2, "--ids: expected integers"),
    (["generate", "x", "--temperature", "-1"], 2, "temperature"),
    (["generate", "x", "--chat"], 1, "no chat template"),
    (["generate", "x", "--bogus-flag"], 2, "unrecognized arguments"),
    (["info", "/nonexistent/dir"], 1, "no config.json"),
])
def test_errors_are_one_line_with_exit_codes(args, code, needle):
    r = run(*args)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_debug_shows_traceback():
    r = run("--debug", "generate", "x", "--model", "/nonexistent/dir")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_generate_without_tokenizer_needs_ids(checkpoints):
    r = run("generate", "hello", "--model", str(checkpoints["llada_mha"]))
    assert r.returncode == 2 and "pass token ids with --ids" in r.stderr


def test_info(checkpoints):
    r = run("info", str(checkpoints["llama_gqa_tied"]), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["layout"] == "llama" and info["kv_heads"] == 2 and info["tied_embeddings"] is True
    assert info["kernels"]["select_confident"]["cpu"] == "_C" and info["tokenizer"] is None
    r = run("info")
    assert r.returncode == 0 and "sentencepiece" in r.stdout and "llada" in r.stdout
    # the kernel table: one line per op naming what runs on each device
    assert re.search(r"^ +select_confident: cpu _C; cuda \S", r.stdout, re.M)
    assert re.search(r"^ +attention: cpu .*; cuda ", r.stdout, re.M)


def _readme_block():
    readme = (ROOT / "README.md").read_text()
    return re.search(r"```bash\n(.*?)```", readme, re.S).group(1).splitlines()


def test_readme_first_command_generates_text():
    """The README's first command, minus its install step (CI has just installed the package)."""
    first = _readme_block()[0]
    assert first.startswith("pip install torch==2.13.0 && pip install . && ")
    cmd = first.split(" && ", 2)[2]
    assert cmd.startswith("illada-rt generate ")
    r = subprocess.run(["bash", "-ec", cmd], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) >= 5


def test_readme_test_command_is_what_ci_runs():
    assert _readme_block()[1] == "bash .ci/run"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pytest" in ci and "torch==2.13.0" in ci


def test_readme_samples():
    """Every `$ illada-rt generate ...` sample in the README prints exactly the output shown under it."""
    readme = (ROOT / "README.md").read_text()
    samples = []
    for block in re.findall(r"```console\n(.*?)```", readme, re.S):
        for chunk in block.strip("\n").split("\n\n"):
            lines = chunk.splitlines()
            assert lines[0].startswith("$ illada-rt generate "), lines[0]
            samples.append((lines[0][2:], "\n".join(lines[1:])))
    assert len(samples) >= 5
    for cmd, want in samples:
        r = subprocess.run(["bash", "-ec", cmd], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.rstrip("\n") == want, cmd
