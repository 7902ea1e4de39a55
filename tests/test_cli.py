"""The console script (run as a subprocess: exit codes, output) and the README's commands."""
import argparse
import inspect
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import illada_rt
from illada_rt import ops
from illada_rt.cli import build_parser
from illada_rt.quantize import quantize_checkpoint
from illada_rt.synthetic import TinySpec, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run(*args, stdin=None, env=None):
    return subprocess.run([sys.executable, "-m", "illada_rt.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=300, env=None if env is None else {**os.environ, **env})


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


@pytest.mark.parametrize("args", [
    ["generate", "x", "--model", "/nonexistent/dir", "--debug"],
    ["info", "/nonexistent/dir", "--debug"],
    ["quantize", "/nonexistent/src", "/nonexistent/dst", "--debug"],
])
def test_debug_after_the_subcommand(args):
    r = run(*args)
    assert r.returncode == 1 and "Traceback" in r.stderr and "unrecognized" not in r.stderr


TINY_SAMPLED = ["--ids", "--gen-length", "4", "--steps", "4", "--block-length", "4", "--temperature", "0.5"]


@pytest.mark.parametrize("seed,ok", [(str(2**64), False), ("-1", False), ("1.5", False), (str(2**64 - 1), True)])
def test_seed_must_fit_64_bits(checkpoints, seed, ok):
    r = run("generate", "1,2", "--model", str(checkpoints["llada_mha"]), *TINY_SAMPLED, "--seed", seed)
    if ok:
        assert r.returncode == 0 and len(r.stdout.split()) == 4, r.stderr
    else:
        assert r.returncode == 2 and "argument --seed: expected an integer" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr


@pytest.mark.parametrize("args", [
    ["info"],
    ["generate", "And God said", "--gen-length", "8", "--steps", "8", "--block-length", "8"],
    ["quantize", "SRC", "DST", "--quiet"],
])
def test_closed_stdout_ends_quietly(checkpoints, tmp_path, args):
    """`illada-rt ... | head -1`: the reader goes away before the output is written; no error, SIGPIPE's status."""
    args = [str(checkpoints["llada_mha"]) if a == "SRC" else str(tmp_path / "q") if a == "DST" else a for a in args]
    p = subprocess.Popen([sys.executable, "-m", "illada_rt.cli", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdout.close()  # before the command has written anything (it is still importing torch)
    err = p.stderr.read()
    assert p.wait(timeout=300) == 141, err
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception ignored" not in err and \
        "error" not in err, err


def test_ids_in_ids_out_with_a_tokenizer():
    """--ids: the prompt is ids and the output is ids, also for a checkpoint that has a tokenizer."""
    m = illada_rt.load()
    ids = m.encode_prompt("And God said unto Moses")
    args = ("--ids", "--gen-length", "8", "--steps", "8", "--block-length", "8")
    r = run("generate", ",".join(map(str, ids)), *args)
    assert r.returncode == 0, r.stderr
    g = m.generate([ids], gen_length=8, steps=8, block_length=8)
    assert r.stdout.split() == [str(t) for t in g.generated[0].tolist()]
    # infilling: the prompt's ids with its masks filled, then the generated ids (as text mode shows the text)
    holed = ids[:2] + [m.mask_token_id, m.mask_token_id] + ids[4:]
    r = run("generate", " ".join(map(str, holed)), *args)
    assert r.returncode == 0, r.stderr
    g = m.generate([holed], gen_length=8, steps=8, block_length=8)
    want = g.tokens[0].tolist()
    assert len(want) == len(holed) + 8 and m.mask_token_id not in want
    assert r.stdout.split() == [str(t) for t in want]


def _help(command: str) -> str:
    r = run(command, "--help")
    assert r.returncode == 0, r.stderr
    return " ".join(r.stdout.split())  # argparse wraps lines: compare on single spaces


@pytest.mark.parametrize("command", ["generate", "info", "quantize"])
def test_help_shows_every_default(command):
    text = _help(command)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for a in sub._actions:
        if a.option_strings and a.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {a.default}" in text, (a.option_strings, a.default)


def test_cli_length_defaults_are_stated_beside_the_apis():
    """The CLI's gen-length/steps defaults are shorter than the API's: --help says both, and the CLI does what it
    says (64 tokens in 64 forwards on the default model)."""
    text = _help("generate")
    api = {k: v.default for k, v in inspect.signature(illada_rt.Model.generate).parameters.items()}
    gen = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["generate"]
    cli = {a.dest: a.default for a in gen._actions}
    for name in ("gen_length", "steps"):
        flag = "--" + name.replace("_", "-")
        assert re.search(rf"{flag} \S+ .*?\(default: {cli[name]}; the API's: {api[name]}\)", text), name
    assert f"block_length={api['block_length']}" in text
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"(`--gen-length {cli['gen_length']} --steps {cli['steps']} --block-length {cli['block_length']}`) "
            f"are shorter than the Python API's ({api['gen_length']} / {api['steps']} / {api['block_length']})"
            in readme)
    r = run("generate", "And God said", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["tokens"]) == 64 and out["nfe"] == 64


def test_steps_are_per_block_with_max_new_tokens(checkpoints):
    assert "with --max-new-tokens, steps per block" in _help("generate")
    r = run("generate", "1,2,3", "--ids", "--model", str(checkpoints["llada_mha"]), "--max-new-tokens", "24",
            "--block-length", "8", "--steps", "4", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["nfe"] == 4 * math.ceil(len(out["tokens"]) / 8) and len(out["tokens"]) > 0


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A bf16 checkpoint (the FP8-weight kernel computes in bf16) quantized three ways."""
    root = tmp_path_factory.mktemp("q")
    src = write_checkpoint(root / "src", TinySpec(dtype="bfloat16", d_model=128, mlp_hidden_size=256, seed=8))
    out = {}
    for scheme, gran in (("int8", "channel"), ("int8", "block128"), ("fp8", "channel")):
        out[scheme, gran] = root / f"{scheme}-{gran}"
        quantize_checkpoint(src, out[scheme, gran], scheme=scheme, granularity=gran, progress=False)
    return out


@pytest.mark.parametrize("isa", [None, "avx2"])
@pytest.mark.parametrize("scheme,gran", [("int8", "channel"), ("int8", "block128"), ("fp8", "channel")])
def test_info_says_what_runs(quantized, monkeypatch, scheme, gran, isa):
    path = quantized[scheme, gran]
    env = {} if isa is None else {"ILLADA_RT_CPU_ISA": isa}
    fp8_kernel = "avx512" in ops.cpu_isas() and isa is None  # the FP8-weight kernel needs AVX-512 BF16
    want = {("int8", "channel"): "w8a8", ("int8", "block128"): "dequantized",
            ("fp8", "channel"): "fp8w" if fp8_kernel else "dequantized"}[scheme, gran]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    m = illada_rt.load(path)
    assert {w.kernel for layer in m.transformer.layers for w in (layer.q, layer.up, layer.down)} == {want}
    r = run("info", str(path), "--json", env=env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["quantized_kernel_cpu"] == want and info["compute_dtype_cpu"] == "bfloat16"
    q = info["quantization"]
    assert q.startswith(f"{scheme} weights ({gran} scales, illada-rt)")
    assert ("activations int8, dynamic per token" in q) == (want == "w8a8")
    assert ("FP8-weight kernel" in q) == (want == "fp8w") and ("W8A8 kernel" in q) == (want == "w8a8")
    assert ("dequantized to bfloat16 at load" in q) == (want == "dequantized")


def test_info_storage_dtype_is_what_the_files_hold(quantized, tmp_path):
    d = write_checkpoint(tmp_path / "c", TinySpec(dtype="bfloat16", seed=9))
    cfg = json.loads((d / "config.json").read_text())
    cfg["torch_dtype"] = "float32"  # the config says one thing, the files hold another
    (d / "config.json").write_text(json.dumps(cfg))
    info = json.loads(run("info", str(d), "--json").stdout)
    assert info["storage_dtype"] == "bfloat16" and set(info["tensor_dtypes"]) == {"bfloat16"}
    info = json.loads(run("info", str(quantized["int8", "channel"]), "--json").stdout)
    n = sum(1 for layer in range(2) for _ in ("q", "k", "v", "o", "gate", "up", "down")) + 1  # + the LM head
    assert info["storage_dtype"] == "bfloat16"
    assert info["tensor_dtypes"]["int8"] == n and info["tensor_dtypes"]["float32"] == n  # weights, their scales


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


def shell(cmd: str):
    """A README command line, with this interpreter's `illada-rt` first on PATH (the install under test, not another
    one that PATH happens to find first)."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(["bash", "-ec", cmd], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


def _readme_block():
    readme = (ROOT / "README.md").read_text()
    return re.search(r"```bash\n(.*?)```", readme, re.S).group(1).splitlines()


def test_readme_first_command_generates_text():
    """The README's first command, minus its install step (CI has just installed the package)."""
    first = _readme_block()[0]
    assert first.startswith("pip install torch==2.13.0 && pip install . && ")
    cmd = first.split(" && ", 2)[2]
    assert cmd.startswith("illada-rt generate ")
    r = shell(cmd)
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
    # The samples were written on AVX-512 CPUs, where the compiled layer stack computes attention; an AVX2-only CPU
    # runs PyTorch's SDPA, whose rounding differs, and Gumbel sampling can flip a near-tie there.
    # There the greedy samples must still match, and a sampled one must at least repeat itself under its seed.
    same_kernels = illada_rt.capabilities()["cpu"]["isa"] in ("avx512", "amx")
    for cmd, want in samples:
        r = shell(cmd)
        assert r.returncode == 0, r.stderr
        if same_kernels or "--temperature" not in cmd:
            assert r.stdout.rstrip("\n") == want, cmd
        else:
            again = shell(cmd)
            assert again.returncode == 0 and again.stdout == r.stdout and r.stdout.strip(), cmd
