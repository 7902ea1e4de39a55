"""Checkpoints named as their users have them: a directory, or a Hugging Face repo id (ORG/NAME) resolved through
huggingface_hub: the snapshot in the local hub cache (HF_HOME, HF_HUB_CACHE) when it holds what the loader reads,
else, unless HF_HUB_OFFLINE is set, a download of only those files (never pickles) into that cache."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from .checkpoint import find_weight_files, refuse_pickle_only
from .errors import CheckpointError
from .progress import is_terminal

# What load() and quantize read: config, safetensors weights (one file, or shards and their index), tokenizer files;
# top-level files only (a repo's onnx/ or original/ subfolders are not this checkpoint).
LOADER_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer.model",
                "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]
SUBFOLDERS = ["*/*"]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_repo_id(name) -> bool:
    """A str of the form ORG/NAME that names no existing path."""
    return (isinstance(name, str) and _REPO_ID.fullmatch(name) is not None and ".." not in name
            and not Path(name).exists())


def resolve(name, revision: str | None = None) -> Path:
    """The checkpoint directory `name` stands for: name itself, unless it is a repo id (ORG/NAME, not an existing
    path): then its snapshot at `revision` (a branch, tag or commit hash; default: the default branch) from the hub
    cache, or downloaded. Raises CheckpointError (offline and not cached, not on the Hub, pickle weights only)."""
    if not is_repo_id(name):
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to a Hugging Face repo id (ORG/NAME); {name} is a local "
                             f"path")
        return Path(name)
    if revision is not None and not isinstance(revision, str):
        raise ValueError(f"revision: expected a branch, tag or commit hash (a str), got {revision!r}")
    import huggingface_hub
    from huggingface_hub import constants

    where = name if revision is None else f"{name} (revision {revision!r})"
    snapshot, problem = _cached(name, revision)
    if snapshot is not None and problem is None:
        return snapshot
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(_not_cached(name, revision, where, problem, "HF_HUB_OFFLINE is set"))
    from huggingface_hub.utils import RepositoryNotFoundError, RevisionNotFoundError

    unreachable = _unresolvable_endpoint()
    if unreachable:  # no network: say so at once (the HTTP client would retry for ~25 s, a line per retry)
        raise CheckpointError(_not_cached(name, revision, where, problem, f"the Hub could not be reached "
                                          f"({unreachable})"))
    try:
        files = huggingface_hub.HfApi().list_repo_files(name, revision=revision)
    except RevisionNotFoundError:
        raise CheckpointError(f"{where}: the repo has no such revision on the Hugging Face Hub") from None
    except RepositoryNotFoundError as e:  # also gated or private without a token
        raise CheckpointError(f"{where}: not found on the Hugging Face Hub, or not accessible without logging in "
                              f"(`hf auth login`): {_first_line(e)}") from None
    except Exception as e:  # no network, the Hub down, a proxy: whatever the HTTP client raises
        raise CheckpointError(_not_cached(name, revision, where, problem, f"the Hub could not be reached "
                                          f"({type(e).__name__}: {_first_line(e)})")) from None
    refuse_pickle_only(where, [f for f in files if "/" not in f])  # before anything is downloaded
    return _download(huggingface_hub, name, revision, where, files)


def _unresolvable_endpoint() -> str | None:
    """Why the Hub's host cannot be looked up (no network, no DNS), or None. Skipped behind a proxy, which looks
    names up itself."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except OSError as e:  # socket.gaierror included
        return f"cannot resolve {host}: {e}"
    return None


def _cached(name: str, revision: str | None) -> tuple[Path | None, str | None]:
    """(the cached snapshot, None) when it holds a loadable checkpoint; (snapshot or None, what is missing) else."""
    import huggingface_hub
    from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        snapshot = Path(huggingface_hub.snapshot_download(name, revision=revision, local_files_only=True,
                                                          allow_patterns=LOADER_FILES, ignore_patterns=SUBFOLDERS))
    except LocalEntryNotFoundError as e:
        return None, None if type(e) is LocalEntryNotFoundError else _first_line(e)  # not there / incomplete
    refuse_pickle_only(f"{name} ({snapshot})", [p.name for p in snapshot.iterdir()])
    if not (snapshot / "config.json").is_file():
        return snapshot, f"{snapshot} has no config.json"
    try:
        find_weight_files(snapshot)
    except CheckpointError as e:
        return snapshot, str(e)
    return snapshot, None


def _not_cached(name, revision, where, problem, reason) -> str:
    from huggingface_hub import constants

    state = f"is incomplete in the Hugging Face cache ({problem})" if problem else \
        f"is not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    rev = "" if revision is None else f" --revision {revision}"
    return (f"{where} {state} and names no local directory; {reason}. Download it with `hf download {name}{rev}` "
            f"(`huggingface-cli download {name}{rev}` with an older huggingface_hub)")


def _download(huggingface_hub, name, revision, where, files) -> Path:
    """snapshot_download of the files the loader reads: its bars on a terminal, two plain lines elsewhere."""
    from huggingface_hub import constants
    from huggingface_hub.utils import filter_repo_objects, tqdm

    class Silent(tqdm):  # every bar the library opens, off
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    plain = not is_terminal(sys.stderr)
    wanted = list(filter_repo_objects(files, allow_patterns=LOADER_FILES, ignore_patterns=SUBFOLDERS))
    if plain:
        print(f"illada-rt: downloading {len(wanted)} files of {where} into {constants.HF_HUB_CACHE}",
              file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        path = huggingface_hub.snapshot_download(name, revision=revision, allow_patterns=LOADER_FILES,
                                                 ignore_patterns=SUBFOLDERS, tqdm_class=Silent if plain else None)
    except Exception as e:
        raise CheckpointError(f"{where}: the download failed ({type(e).__name__}: {_first_line(e)})") from None
    if plain:
        print(f"illada-rt: downloaded {where} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return Path(path)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]
