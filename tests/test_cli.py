"""The console script and the README's demo commands."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "illada_rt.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=300)


def test_generate_prints_tokens(checkpoints):
    r = run("generate", "5,6,7", "--model", str(checkpoints["llada_mha"]), "--gen-length", "8", "--steps", "8",
            "--block-length", "4")
    assert r.returncode == 0, r.stderr
    toks = [int(t) for t in r.stdout.split()]
    assert len(toks) == 8 and all(0 <= t < 101 for t in toks)
    import illada_rt
    g = illada_rt.load(checkpoints["llada_mha"]).generate([[5, 6, 7]], gen_length=8, steps=8, block_length=4)
    assert toks == g.generated[0].tolist()


def test_generate_json_and_stdin(checkpoints):
    r = run("generate", "--model", str(checkpoints["llama_gqa_tied"]), "--mask-id", "100", "--gen-length", "8",
            "--steps", "4", "--block-length", "8", "--json", stdin="1 2 3\n")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompt"] == [1, 2, 3] and len(out["generated"]) == 8 and out["nfe"] == 4


def test_generate_reports_errors_cleanly(checkpoints, tmp_path):
    r = run("generate", "1,2", "--model", str(tmp_path))
    assert r.returncode == 2 and "no config.json" in r.stderr and "Traceback" not in r.stderr
    r = run("generate", "1,2", "--model", str(checkpoints["llada_mha"]), "--gen-length", "12", "--block-length", "8")
    assert r.returncode == 2 and "must divide" in r.stderr
    r = run("generate", "1,x", "--model", str(checkpoints["llada_mha"]))
    assert r.returncode != 0 and "integers" in r.stderr


def test_info(checkpoints):
    r = run("info", str(checkpoints["llama_gqa_tied"]), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["layout"] == "llama" and info["kv_heads"] == 2 and info["tied_embeddings"] is True
    assert info["kernels"]["select_confident"]["cpu"] == "_C"


def test_readme_first_command_runs(tmp_path):
    """The README's demo (generation from a freshly written checkpoint), minus the install step."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    lines = block.splitlines()
    assert lines[0].startswith("pip install torch==2.13.0") and lines[2] == "bash .ci/run"
    # the install step is what CI itself just did; run the rest of the first two commands
    demo = [lines[0][lines[0].index("python tools/"):], lines[1]]
    assert demo[1].startswith("illada-rt generate")
    script = "\n".join(demo).replace("/tmp/tiny-llada", str(tmp_path / "tiny"))
    r = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split("\n")[-2].split()) == 32  # 32 generated token ids


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/run" in readme
    assert "pytest" in ci and "torch==2.13.0" in ci
