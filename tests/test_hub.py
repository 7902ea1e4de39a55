"""Models named by Hugging Face repo id: resolved from a hub cache laid out exactly as huggingface_hub lays it out
(refs/, snapshots/<commit>/ of relative symlinks into blobs/), through the library; no network anywhere."""
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants, scan_cache_dir, snapshot_download, try_to_load_from_cache
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import LocalEntryNotFoundError, filter_repo_objects

import illada_rt
import illada_rt.hub as hub_module
from illada_rt.errors import CheckpointError, ConfigError
from illada_rt.progress import Progress
from illada_rt.synthetic import TinySpec, write_checkpoint

REPO = "GSAI-ML/iLLaDA-tiny"
COMMIT_MAIN = "1" * 40
COMMIT_V2 = "2" * 40


def add_revision(cache: Path, repo_id: str, commit: str, files: dict[str, bytes], ref: str | None = None) -> Path:
    """Put files into the hub cache as the library does: content-addressed blobs, the snapshot of `commit` made of
    relative symlinks to them, refs/<ref> holding the commit hash (no newline). Returns the snapshot directory."""
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A hub cache holding REPO at two commits (main: one tiny model, branch v2: another), in force offline for
    this process (the library reads HF_HUB_CACHE and HF_HUB_OFFLINE at import, so its constants are set)."""
    cache = tmp_path / "hub"
    a = write_checkpoint(tmp_path / "a", TinySpec(layout="llada", n_heads=4, n_kv_heads=2, shards=2, seed=21))
    b = write_checkpoint(tmp_path / "b", TinySpec(layout="llama", n_heads=4, n_kv_heads=4, seed=22))
    snaps = {"main": add_revision(cache, REPO, COMMIT_MAIN, files_of(a), ref="main"),
             "v2": add_revision(cache, REPO, COMMIT_V2, files_of(b), ref="v2")}
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return {"cache": cache, "dirs": {"main": a, "v2": b}, "snapshots": snaps}


def hub_env(cache: Path) -> dict:
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "illada_rt.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


def logits(model, ids=((3, 4, 5, 6, 7),)):
    return model.forward(torch.tensor(ids))


def test_the_fake_cache_is_the_library_layout(hub):
    """The library itself finds both revisions in the fake cache: by branch, by commit, through scan_cache_dir."""
    cache, snaps = hub["cache"], hub["snapshots"]
    assert try_to_load_from_cache(REPO, "config.json", cache_dir=cache) == str(snaps["main"] / "config.json")
    assert try_to_load_from_cache(REPO, "config.json", cache_dir=cache, revision="v2") == \
        str(snaps["v2"] / "config.json")
    assert snapshot_download(REPO, cache_dir=cache, revision=COMMIT_V2, local_files_only=True) == str(snaps["v2"])
    (repo,) = scan_cache_dir(cache).repos
    assert repo.repo_id == REPO and {r.commit_hash for r in repo.revisions} == {COMMIT_MAIN, COMMIT_V2}
    assert {tuple(r.refs) for r in repo.revisions} == {("main",), ("v2",)}


@pytest.mark.parametrize("revision,which", [(None, "main"), ("main", "main"), ("v2", "v2"), (COMMIT_V2, "v2"),
                                            (COMMIT_MAIN, "main")])
def test_load_by_repo_id_and_revision(hub, revision, which):
    m = illada_rt.load(REPO, revision=revision, mask_token_id=100)
    assert m.path == hub["snapshots"][which]
    ref = illada_rt.load(hub["dirs"][which], mask_token_id=100)
    torch.testing.assert_close(logits(m), logits(ref), rtol=0, atol=0)


def test_revision_with_a_directory_is_refused(hub):
    with pytest.raises(ValueError, match="revision"):
        illada_rt.load(hub["dirs"]["main"], revision="main")


def test_a_missing_path_that_is_no_repo_id_says_so(tmp_path, hub):
    for name in (str(tmp_path / "nope"), "./nope", "a/b/c"):
        with pytest.raises(ConfigError, match="does not exist"):
            illada_rt.load(name)


def test_offline_and_not_cached_is_one_clear_error(hub):
    with pytest.raises(CheckpointError) as e:
        illada_rt.load("GSAI-ML/LLaDA-8B-Instruct")
    msg = str(e.value)
    assert "GSAI-ML/LLaDA-8B-Instruct" in msg and "not in the Hugging Face cache" in msg
    assert "hf download GSAI-ML/LLaDA-8B-Instruct" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="revision 'v3'"):  # a revision the cache does not hold
        illada_rt.load(REPO, revision="v3")


def test_offline_with_a_partial_snapshot_says_what_is_missing(hub):
    """A snapshot holding only config.json (what a transformers AutoConfig call leaves): not loadable, offline."""
    config = (hub["dirs"]["main"] / "config.json").read_bytes()
    add_revision(hub["cache"], "org/config-only", "4" * 40, {"config.json": config}, ref="main")
    with pytest.raises(CheckpointError, match=r"org/config-only is incomplete in the Hugging Face cache .*no "
                                              r"model\.safetensors.*hf download org/config-only"):
        illada_rt.load("org/config-only")


def test_cli_offline_error_is_one_line(tmp_path):
    r = cli("info", "GSAI-ML/LLaDA-8B-Instruct", env=hub_env(tmp_path / "empty"))
    assert r.returncode == 1 and r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert "GSAI-ML/LLaDA-8B-Instruct" in line and "hf download GSAI-ML/LLaDA-8B-Instruct" in line


def test_no_network_fails_at_once_without_retries(hub, monkeypatch):
    """HF_HUB_OFFLINE unset and the Hub's host cannot be looked up (no network): the offline error at once, without
    the HTTP client's retries (~25 s, a line each)."""
    import socket

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)

    def no_dns(host, *a, **kw):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda *a, **kw: pytest.fail("asked the Hub"))
    with pytest.raises(CheckpointError, match=r"GSAI-ML/LLaDA-8B-Instruct is not in the Hugging Face cache .*could "
                                              r"not be reached \(cannot resolve huggingface.co.*hf download"):
        illada_rt.load("GSAI-ML/LLaDA-8B-Instruct")


def test_pickle_only_repo_is_refused_before_any_download(tmp_path, hub, monkeypatch):
    config = (hub["dirs"]["main"] / "config.json").read_bytes()
    add_revision(hub["cache"], "org/pickled", "3" * 40, {"config.json": config, "pytorch_model.bin": b"x"},
                 ref="main")
    with pytest.raises(CheckpointError, match="only pickle weight files.*pytorch_model.bin"):
        illada_rt.load("org/pickled")
    # not cached, online: the Hub's file list decides, and nothing is downloaded
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_module, "_unresolvable_endpoint", lambda: None)  # a network, as far as we ask
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, repo_id, **kw: ["config.json", "pytorch_model.bin", "README.md"])
    def no_download(repo_id, **kw):
        if kw.get("local_files_only"):
            raise LocalEntryNotFoundError("not cached")
        pytest.fail("downloaded")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    with pytest.raises(CheckpointError, match="org/remote-pickled.*only pickle weight files"):
        illada_rt.load("org/remote-pickled")


def test_download_fetches_only_what_the_loader_reads(hub, monkeypatch, capsys):
    """Not cached, online: one snapshot_download whose patterns, filtered by the library, keep config, safetensors
    shards and index, tokenizer files; never pickles, never subfolders."""
    listing = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
               "model.safetensors.index.json", "pytorch_model.bin", "training_args.pt", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "README.md", "onnx/model.safetensors",
               "generation_config.json", ".gitattributes"]
    calls = []

    def fake_download(repo_id, **kw):
        if kw.get("local_files_only"):  # the cache look-up: not cached
            raise LocalEntryNotFoundError("not cached")
        calls.append(kw)
        return str(hub["snapshots"]["main"])

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_module, "_unresolvable_endpoint", lambda: None)  # a network, as far as we ask
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: listing)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    m = illada_rt.load("org/not-cached", revision="v1", mask_token_id=100)
    (kw,) = calls
    assert kw["tqdm_class"](total=3).disable  # stderr is no terminal here: no bars, two plain lines
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "downloading 7 files of org/not-cached (revision 'v1')" in err[0], err
    assert kw["revision"] == "v1" and not kw.get("local_files_only")
    got = set(filter_repo_objects(listing, allow_patterns=kw["allow_patterns"], ignore_patterns=kw["ignore_patterns"]))
    assert got == {"config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                   "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json"}
    assert m.path == hub["snapshots"]["main"]


def test_every_cli_subcommand_takes_a_repo_id(hub, tmp_path):
    env = hub_env(hub["cache"])
    r = cli("info", REPO, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == str(hub["snapshots"]["main"])
    r = cli("info", REPO, "--revision", "v2", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == str(hub["snapshots"]["v2"])

    args = ["5,6,7", "--ids", "--gen-length", "8", "--steps", "8", "--block-length", "4", "--mask-id", "100"]
    r = cli("generate", *args, "--model", REPO, env=env)
    assert r.returncode == 0, r.stderr
    want = illada_rt.load(hub["dirs"]["main"], mask_token_id=100).generate([[5, 6, 7]], gen_length=8, steps=8,
                                                                           block_length=4)
    assert [int(t) for t in r.stdout.split()] == want.generated[0].tolist()

    r = cli("quantize", REPO, str(tmp_path / "q"), "--revision", "v2", env=env)
    assert r.returncode == 0, r.stderr
    q = illada_rt.load(tmp_path / "q", mask_token_id=100)
    assert q.config.raw["quantization_config"] and q.config.layout == "llama"
    assert sorted(p.name for p in (tmp_path / "q").iterdir() if not p.is_symlink()) == \
        sorted(p.name for p in (tmp_path / "q").iterdir())  # the blobs' contents, not links into the cache


def test_hf_home_is_honoured(tmp_path):
    """HF_HOME alone (no HF_HUB_CACHE): the cache is HF_HOME/hub."""
    src = write_checkpoint(tmp_path / "src", TinySpec(seed=23))
    snap = add_revision(tmp_path / "home" / "hub", REPO, COMMIT_MAIN, files_of(src), ref="main")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_CACHE"}
    r = subprocess.run([sys.executable, "-m", "illada_rt.cli", "info", REPO, "--json"], capture_output=True,
                       text=True, timeout=300, env={**env, "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == str(snap)


def test_quantize_progress_on_a_pipe_is_a_few_plain_lines(checkpoints, tmp_path):
    """stderr to a pipe (a log): no carriage-return redraws, a handful of lines whatever the tensor count."""
    r = subprocess.run([sys.executable, "-m", "illada_rt.cli", "quantize", str(checkpoints["llada_fp16_sharded"]),
                        str(tmp_path / "q")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "\x1b" not in r.stderr
    lines = r.stderr.splitlines()
    assert 1 <= len(lines) <= 6, lines
    assert lines[-1].startswith("quantize: 100%"), lines


class Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("total", [1, 3, 1000])
def test_progress_off_a_terminal_is_four_lines_at_most(total):
    out = Stream(tty=False)
    p = Progress(total, "quantize", "tensor", stream=out)
    for _ in range(total):
        p.update(1, "model.safetensors")
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == min(total, 4) and "\r" not in out.getvalue()
    assert lines[-1].startswith(f"quantize: 100% ({total}/{total} tensors) in ")
    assert lines[-1].endswith(", model.safetensors")


def test_progress_on_a_terminal_is_a_bar():
    out = Stream(tty=True)
    p = Progress(10, "quantize", "tensor", stream=out)
    for _ in range(10):
        p.update(1)
    p.close()
    assert "\r" in out.getvalue() and "10/10" in out.getvalue()
