"""The quantize tool checks every input before writing anything and never loses data: wrong sources and schemes,
every destination whose replacement could delete something (SRC itself, a directory holding SRC, through symlinks
too, a file, a directory that is no checkpoint), inf/NaN weights, --report prompts the source cannot encode, and
a write failing half way (with the OS's own error, as root too)."""
import json
import os
import resource
import signal
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from illada_rt import quant
from illada_rt.errors import CheckpointError, ConfigError
from illada_rt.quantize import quantize_checkpoint
from illada_rt.synthetic import TinySpec, write_checkpoint
from tokenizer_fixtures import write_hf_tokenizer


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "illada_rt.cli", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def _tree(root):
    """Every path under root (symlinks not followed) with its link target or file bytes: what must not change."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[rel] = f.read()
            else:
                out[rel] = "dir"
    return out


@pytest.mark.parametrize("case,match", [
    ("not_a_dir", "not a directory"),
    ("no_config", "no config.json"),
    ("pickle_only", "only pickle weight files"),
    ("already_quantized", "already quantized"),
    ("dst_inside_src", "must not be the source or inside it"),
    ("bad_scheme", "scheme"),
    ("bad_granularity", "granularity"),
])
def test_bad_input(tmp_path, checkpoints, case, match):
    src, dst = checkpoints["llada_mha"], tmp_path / "out"
    kw = {}
    if case == "not_a_dir":
        src = tmp_path / "missing"
    elif case == "no_config":
        src = tmp_path / "empty"
        src.mkdir()
    elif case == "pickle_only":
        src = tmp_path / "pk"
        src.mkdir()
        (src / "config.json").write_text((checkpoints["llada_mha"] / "config.json").read_text())
        (src / "pytorch_model.bin").write_bytes(b"\x80\x04 never unpickled")
    elif case == "already_quantized":
        quantize_checkpoint(src, tmp_path / "q1", progress=False)
        src = tmp_path / "q1"
    elif case == "dst_inside_src":
        dst = src / "sub"
    elif case == "bad_scheme":
        kw["scheme"] = "int4"
    elif case == "bad_granularity":
        kw["granularity"] = "tensor"
    with pytest.raises((CheckpointError, ConfigError, ValueError), match=match):
        quantize_checkpoint(src, dst, progress=False, **kw)
    assert not dst.exists() or case == "dst_inside_src"


def test_failure_half_way_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = quant.quantize_weight

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(quant, "quantize_weight", flaky)
    dst = tmp_path / "q"
    with pytest.raises(CheckpointError, match="No space left on device"):
        quantize_checkpoint(checkpoints["llama_untied_sharded"], dst, progress=False)
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == []  # no partial directory either
    # an existing DST survives a failed --force run untouched
    monkeypatch.setattr(quant, "quantize_weight", real)
    quantize_checkpoint(checkpoints["llama_untied_sharded"], dst, progress=False)
    before = sorted(p.name for p in dst.iterdir())
    calls["n"] = 0
    monkeypatch.setattr(quant, "quantize_weight", flaky)
    with pytest.raises(CheckpointError):
        quantize_checkpoint(checkpoints["llama_untied_sharded"], dst, scheme="fp8", force=True, progress=False)
    assert sorted(p.name for p in dst.iterdir()) == before
    assert json.loads((dst / "config.json").read_text())["quantization_config"]["scheme"] == "int8"


@pytest.mark.parametrize("case,match", [
    ("parent_of_src", "must not be the source or contain it"),
    ("src_itself", "must not be the source or contain it"),
    ("grandparent", "must not be the source or contain it"),
    ("dotdot_of_src", "must not be the source or contain it"),
    ("symlink_to_parent", "must not be the source or contain it"),
    ("src_through_symlink", "must not be the source or contain it"),
    ("a_file", "exists and is not a directory"),
    ("under_a_file", "is not a directory"),
    ("not_a_checkpoint", "holds files but no config.json"),
])
def test_force_never_deletes_what_it_should_not(tmp_path, case, match):
    """--force replaces DST only when that loses nothing but an old checkpoint: each refusal comes before anything
    is written, and the whole tree is as it was."""
    src = write_checkpoint(tmp_path / "outer" / "src", TinySpec(seed=1))
    (tmp_path / "afile").write_text("keep me")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("keep me too")
    dst = {"parent_of_src": tmp_path / "outer", "src_itself": src, "grandparent": tmp_path,
           "dotdot_of_src": src / "..", "symlink_to_parent": tmp_path / "link",
           "src_through_symlink": tmp_path / "outer", "a_file": tmp_path / "afile",
           "under_a_file": tmp_path / "afile" / "q", "not_a_checkpoint": tmp_path / "home"}[case]
    (tmp_path / "link").symlink_to(tmp_path / "outer", target_is_directory=True)
    if case == "src_through_symlink":
        src = tmp_path / "link" / "src"
    before = _tree(tmp_path)
    with pytest.raises(CheckpointError, match=match):
        quantize_checkpoint(src, dst, force=True, progress=False)
    assert _tree(tmp_path) == before


def test_cli_refuses_a_destination_holding_the_source(tmp_path):
    """The issue's reproduction, as a user types it (relative paths)."""
    write_checkpoint(tmp_path / "dl" / "outer" / "src", TinySpec(seed=1))
    before = _tree(tmp_path)
    r = _cli("quantize", "dl/outer/src", "dl/outer", "--force", "--quiet", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == ("illada-rt: error: dl/outer: the destination must not be the source or contain it "
                                "(replacing it would delete dl/outer/src)")
    assert _tree(tmp_path) == before


def test_force_through_a_symlinked_destination(tmp_path):
    """DST a symlink to a checkpoint directory: --force replaces the directory it names and keeps the link;
    missing parents of a new DST are created."""
    src = write_checkpoint(tmp_path / "src", TinySpec(seed=1))
    quantize_checkpoint(src, tmp_path / "disk" / "a" / "q", progress=False)  # parents made on the way
    (tmp_path / "q").symlink_to(tmp_path / "disk" / "a" / "q", target_is_directory=True)
    quantize_checkpoint(src, tmp_path / "q", scheme="fp8", force=True, progress=False)
    assert os.readlink(tmp_path / "q") == str(tmp_path / "disk" / "a" / "q")
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["scheme"] == "fp8"
    assert sorted(os.listdir(tmp_path / "disk" / "a")) == ["q"]  # no partial or old directory left
    assert sorted(os.listdir(tmp_path)) == ["disk", "q", "src"]


def _poison(src, name, at, value):
    index = json.loads((src / "model.safetensors.index.json").read_text())
    path = src / index["weight_map"][name]
    tensors = load_file(str(path))
    tensors[name][at] = value
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("name,at,value,shown", [
    ("model.layers.1.mlp.up_proj.weight", (5, 7), float("nan"), "nan"),   # a weight being quantized
    ("model.embed_tokens.weight", (3, 2), float("inf"), "inf"),            # a tensor copied as is
])
def test_nonfinite_weight_names_tensor_and_file(tmp_path, name, at, value, shown):
    src = write_checkpoint(tmp_path / "src", TinySpec(layout="llama", shards=2, seed=6))
    path = _poison(src, name, at, value)
    before = _tree(tmp_path)
    r = _cli("quantize", str(src), str(tmp_path / "new" / "deeper" / "q"), "--quiet")
    assert r.returncode == 1, r.stderr
    assert f"{path}: tensor {name!r} holds {shown} at [{at[0]}, {at[1]}]" in r.stderr, r.stderr
    assert _tree(tmp_path) == before  # no partial directory, nor the parents it made


def test_report_inputs_are_checked_before_writing(checkpoints, tmp_path):
    """Prompts the source cannot encode are usage errors (exit 2) before DST exists, so a corrected rerun needs no
    --force; --report works on a checkpoint that names no mask token."""
    dst = tmp_path / "q"
    r = _cli("quantize", str(checkpoints["llama_untied_sharded"]), str(dst), "--report", "--prompt", "hello",
             "--quiet")
    assert r.returncode == 2 and "has no tokenizer" in r.stderr, r.stderr
    assert not dst.exists()
    (tmp_path / "empty.txt").write_text("\n  \n")
    r = _cli("quantize", str(checkpoints["llada_mha"]), str(dst), "--report", "--prompts-file",
             str(tmp_path / "empty.txt"), "--quiet")
    assert r.returncode == 2 and "holds no prompt" in r.stderr, r.stderr
    assert not dst.exists()
    text = write_hf_tokenizer(tmp_path / "text")
    write_checkpoint(text, TinySpec(layout="llama", vocab_size=300, mask_token_id=None, quiet_token=None, seed=3,
                                    max_sequence_length=64))
    for prompt, why in [("", "0 tokens"), ("the light " * 40, "tokens (expected 1 to the model's maximum length")]:
        r = _cli("quantize", str(text), str(dst), "--report", "--prompt", prompt, "--quiet")
        assert r.returncode == 2 and why in r.stderr, r.stderr
        assert not dst.exists()
    r = _cli("quantize", str(text), str(dst), "--report", "--prompt", "And God said", "--quiet")
    assert r.returncode == 0 and "top-1 agreement" in r.stdout, r.stderr
    r = _cli("quantize", str(checkpoints["llama_gqa_tied"]), str(tmp_path / "t"), "--report", "--quiet")
    assert r.returncode == 0 and "top-1 agreement" in r.stdout, r.stderr


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_write_failure_from_the_os(checkpoints, tmp_path):
    """A real write error that root cannot bypass (the file-size limit, which binds root too): exit 1 with the OS's
    reason, nothing left behind, and an existing DST replaced with --force stays as it was."""
    src, dst = checkpoints["llada_mha"], tmp_path / "q"
    r = _cli("quantize", str(src), str(dst), "--quiet", preexec_fn=_limit_file_size)
    assert r.returncode == 1, r.stderr
    assert "cannot write the quantized checkpoint (File too large); nothing was left behind" in r.stderr, r.stderr
    assert os.listdir(tmp_path) == []
    quantize_checkpoint(src, dst, progress=False)
    before = _tree(tmp_path)
    r = _cli("quantize", str(src), str(dst), "--force", "--scheme", "fp8", "--quiet", preexec_fn=_limit_file_size)
    assert r.returncode == 1 and "File too large" in r.stderr, r.stderr
    assert _tree(tmp_path) == before


def test_destination_aliasing_the_source_through_a_bind_mount(tmp_path):
    """The same directory under another path that no symlink explains (a bind mount) is recognised too: by
    identity (device and inode), not by name. Mounted read-only, so a wrong implementation cannot delete."""
    src = write_checkpoint(tmp_path / "outer" / "src", TinySpec(seed=1))
    alias = tmp_path / "alias"
    alias.mkdir()
    r = subprocess.run(["mount", "--bind", "-o", "ro", str(tmp_path / "outer"), str(alias)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"needs permission to bind-mount ({r.stderr.decode().strip()})")
    try:
        before = _tree(tmp_path / "outer")
        with pytest.raises(CheckpointError, match="must not be the source or contain it"):
            quantize_checkpoint(src, alias, force=True, progress=False)
        with pytest.raises(CheckpointError, match="must not be the source or inside it"):
            quantize_checkpoint(alias / "src", src / "q", progress=False)
        assert _tree(tmp_path / "outer") == before
    finally:
        subprocess.run(["umount", str(alias)], check=True)
