"""Load HF safetensors checkpoints straight into the decoder, without random initialisation."""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from minirun.errors import MinirunError
from minirun.layers import calibrate
from minirun.models import Decoder
from minirun.models.config import ModelConfig, checkpoint_json, load_config
from minirun.paths import cache_root, read_cache, write_atomic

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, config: ModelConfig, device: torch.device) -> torch.dtype:
    """User choice, else the checkpoint's dtype on GPU; on CPU a bfloat16 checkpoint stays bfloat16
    where the CPU computes it natively (faster there, within transformers' 1e-2 logit bounds) and
    everything else runs in float32 (exact, and the fast choice on CPUs without bfloat16 arithmetic)."""
    if isinstance(dtype, torch.dtype):  # torch.float16 as well as "float16"; torch.int8 is refused below
        dtype = str(dtype).removeprefix("torch.")
    if dtype is None:
        if device.type == "cuda":
            dtype = config.torch_dtype or "float32"
        else:
            dtype = "bfloat16" if config.torch_dtype == "bfloat16" and calibrate.native_bfloat16() else "float32"
    if dtype not in DTYPES:
        raise MinirunError(f"unsupported dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _weight_files(checkpoint: Path) -> dict[str, Path]:
    """Map every tensor name to the file holding it: model.safetensors where the folder holds one, as transformers
    chooses it, else the shards of model.safetensors.index.json."""
    index, single = checkpoint / "model.safetensors.index.json", checkpoint / "model.safetensors"
    if index.is_file() and not single.is_file():
        weight_map = checkpoint_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise MinirunError(f"{index} has no weight_map of tensor names to shard files: re-download the checkpoint "
                               "or restore the file")
        for shard in sorted(set(weight_map.values())):
            if not (checkpoint / shard).is_file():
                raise MinirunError(f"missing shard {shard} listed in {index}: download it again")
        return {name: checkpoint / shard for name, shard in weight_map.items()}
    if not single.is_file():
        raise MinirunError(f"no model.safetensors or model.safetensors.index.json in {checkpoint}")
    return {name: single for name in _open(single).keys()}


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise MinirunError(f"cannot read {path} ({e}): the file is truncated or corrupt, download it again") from None


def _hf_names(c: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Our parameter name -> the HF tensor names that form it (concatenated along dim 0)."""
    names: dict[str, tuple[str, ...]] = {"embed.weight": ("model.embed_tokens.weight",), "norm.weight": ("model.norm.weight",)}
    if not c.tie_word_embeddings:
        names["lm_head.weight"] = ("lm_head.weight",)
    for i in range(c.num_layers):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        names[ours + "attn_norm.weight"] = (hf + "input_layernorm.weight",)
        names[ours + "mlp_norm.weight"] = (hf + "post_attention_layernorm.weight",)
        kinds = ["weight"] + (["bias"] if c.qkv_bias else [])
        for kind in kinds:
            names[ours + f"attn.wqkv.{kind}"] = tuple(hf + f"self_attn.{p}_proj.{kind}" for p in "qkv")
        for kind in ["weight"] + (["bias"] if c.o_bias else []):
            names[ours + f"attn.wo.{kind}"] = (hf + f"self_attn.o_proj.{kind}",)
        if c.qk_norm:
            names[ours + "attn.q_norm.weight"] = (hf + "self_attn.q_norm.weight",)
            names[ours + "attn.k_norm.weight"] = (hf + "self_attn.k_norm.weight",)
        for kind in ["weight"] + (["bias"] if c.mlp_bias else []):
            names[ours + f"mlp.w_gate_up.{kind}"] = (hf + f"mlp.gate_proj.{kind}", hf + f"mlp.up_proj.{kind}")
            names[ours + f"mlp.w_down.{kind}"] = (hf + f"mlp.down_proj.{kind}",)
    return names


CONTENT_FILES = ("*.json", "*.jinja", "*.model", "*.safetensors", "*.gguf")  # what loading a checkpoint reads
SAMPLE = 4096  # bytes of each tensor (or a large file's ends) in a file's quick signature
# A file written this recently is hashed whole every time, its hash not cached: a second write within the file
# system's timestamp granularity keeps its modification time (git's "racily clean" files)
SETTLED_NS = 2_000_000_000


def _signature(f: Path, size: int) -> bytes:
    """What changes with almost any rewrite, read in milliseconds: a safetensors file's header (every tensor's
    name, dtype, shape and offsets) and each tensor's first and last `SAMPLE` bytes, or a file's ends."""
    parts = []
    with f.open("rb") as handle:
        if f.suffix == ".safetensors" and size >= 8:
            length = int.from_bytes(handle.read(8), "little")
            header = handle.read(length)
            parts.append(header)
            try:
                tensors = json.loads(header)
            except ValueError:
                tensors = {}  # loading refuses it with its own message
            for _, info in sorted(tensors.items()):
                if isinstance(info, dict) and "data_offsets" in info:
                    start, end = (8 + length + offset for offset in info["data_offsets"])
                    for at in sorted({start, max(start, end - SAMPLE)}):
                        handle.seek(at)
                        parts.append(handle.read(min(SAMPLE, end - at)))
        else:
            parts.append(handle.read(SAMPLE))
            handle.seek(max(0, size - SAMPLE))
            parts.append(handle.read())
    return hashlib.sha256(b"".join(parts)).digest()


def file_sha256(f: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with f.open("rb") as handle:
        while chunk := handle.read(16 << 20):
            digest.update(chunk)  # releases the GIL: a sharded checkpoint's files hash in parallel
    return digest.hexdigest()


def content_files(checkpoint: str | Path) -> list[Path]:
    """The files loading a checkpoint (a folder, or one file) reads, in a fixed order."""
    root = Path(checkpoint)
    return [root] if root.is_file() else sorted({f for pattern in CONTENT_FILES for f in root.glob(pattern)
                                                 if f.is_file() and not f.name.startswith(".")})


_quick: dict[tuple, str] = {}  # quick_digest's answers by its files' stats


def quick_digest(checkpoint: str | Path) -> str:
    """A short hash of a checkpoint's files' names, sizes and quick signatures (`_signature`: every tensor's ends),
    for keys asked of many times where `checkpoint_digest`'s first whole read would cost seconds: other weights
    written at the same path change it with near certainty, a re-pull of the same files not. Kept per process while
    the files' sizes, modification times and inodes stay (settled files only, as `checkpoint_digest` caches), so an
    evaluation asking once per item stats its files instead of reading every tensor's ends again."""
    files = content_files(checkpoint)
    stats = [f.stat() for f in files]
    key = tuple((str(f.resolve()), s.st_size, s.st_mtime_ns, s.st_ino) for f, s in zip(files, stats))
    if (known := _quick.get(key)) is not None:
        return known
    digest = hashlib.sha256()
    for f, stat in zip(files, stats):
        digest.update(f"{f.name}\0{stat.st_size}\0".encode() + _signature(f, stat.st_size))
    short = digest.hexdigest()[:16]
    if all(time.time_ns() - s.st_mtime_ns > SETTLED_NS for s in stats):
        _quick[key] = short
    return short


def checkpoint_digest(checkpoint: str | Path) -> str:
    """A short hash of every byte a checkpoint's loading reads, to tell other weights at the same path apart (a
    run directory resumed after the checkpoint was overwritten, or edited in place, mixed two models' rows).
    Hashing a 16 GB model takes ~20 s on one core, so each file's hash is cached under `cache_root()`, keyed by
    its path, size, modification time and a quick signature of its content (`_signature`), once the file is
    `SETTLED_NS` old: a later run re-reads only files that changed. Timestamps do not enter the digest: a
    re-pull of the same files keeps it."""
    files = content_files(checkpoint)
    cache_file = cache_root() / "file-digests.json"
    cached = read_cache(cache_file, "checkpoint file digests")
    cached = cached if isinstance(cached, dict) else {}
    keys, sizes, settled = {}, {}, set()
    for f in files:
        stat = f.stat()
        sizes[f] = stat.st_size
        keys[f] = (f"{f.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}|"
                   f"{_signature(f, stat.st_size).hex()}")
        if time.time_ns() - stat.st_mtime_ns > SETTLED_NS:
            settled.add(f)
    todo = [f for f in files if f not in settled or not isinstance(cached.get(keys[f]), str)]
    fresh = {}
    if todo:
        with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1)) as pool:
            fresh = dict(zip(todo, pool.map(file_sha256, todo)))
    if kept := settled & fresh.keys():
        cached = current_digests(cached, set(keys.values()))
        cached.update((keys[f], fresh[f]) for f in kept)
        write_atomic(cache_file, lambda tmp: tmp.write_text(json.dumps(cached), encoding="utf-8"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\0{sizes[f]}\0{fresh.get(f) or cached[keys[f]]}\0".encode())
    return digest.hexdigest()[:16]


def current_digests(cached: dict[str, str], now: set[str]) -> dict[str, str]:
    """The cached file digests that can still be read again: not those of a file now gone (a deleted
    checkpoint, a test's temporary copy) nor an earlier version of one keyed afresh in `now`. Without
    this the cache kept every version of every file ever hashed and was read whole on every load: 568
    entries of which 12 files still existed, after a few test runs."""
    paths = {key.rsplit("|", 4)[0] for key in now}
    return {key: digest for key, digest in cached.items()
            if key in now or ((path := key.rsplit("|", 4)[0]) not in paths and os.path.exists(path))}


SOURCE_FILE = ".minirun-source.json"  # where a checkpoint came from; hidden, so no part of its digest


def write_source(checkpoint: Path, source: dict) -> None:
    """Record where `checkpoint`'s files came from (a hub repo and commit, a GGUF and its hash), for results to cite."""
    write_atomic(checkpoint / SOURCE_FILE, lambda tmp: tmp.write_text(json.dumps(source, indent=1) + "\n"))


def checkpoint_source(checkpoint: str | Path) -> dict | None:
    """Where `pull` or `convert` recorded `checkpoint` came from; None for a folder made otherwise (or an unreadable
    record: provenance only, never a reason to stop a run)."""
    try:
        source = json.loads((Path(checkpoint) / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return source if isinstance(source, dict) else None


def auto_device(device: str | torch.device) -> str | torch.device:
    """"auto" is this machine's CUDA GPU where one is visible, else the CPU (the command line's default, so a run
    on a GPU box does not crawl on its CPU unasked); every other device is kept as given."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def checked_device(device: str | torch.device, here: bool = True) -> torch.device:
    """The device to run on, refused in one line where minirun or (`here`) this machine cannot run: only the CPU
    and CUDA GPUs are supported (torch knows mps, xpu and meta too, and fails on them deep inside a run)."""
    device = auto_device(device)
    try:
        device = torch.device(device)
    except RuntimeError:
        raise MinirunError(f"unknown device {str(device)!r}: use auto, cpu, cuda, cuda:1, ...") from None
    if device.type not in ("cpu", "cuda"):
        raise MinirunError(f"device {str(device)!r} is not supported: minirun runs on cpu or cuda (cuda:1, ...)")
    if not here:  # a file written for another machine (a sweep for the GPU box)
        return device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MinirunError(f"device {str(device)!r} requested but no CUDA GPU is available: run on cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise MinirunError(f"device {str(device)!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                           "GPU(s), cuda:0 onwards")
    return device


def meminfo_available(meminfo: str, cgroup: dict[str, str] | None = None) -> tuple[int, int] | None:
    """(available, total) bytes of host memory from /proc/meminfo's text: available memory plus free swap, of
    memory plus swap; within a cgroup v2 memory limit (`cgroup`: its memory.max, memory.current and memory.stat
    texts), at most the limit less what the group holds, its page cache counted as free. None without the fields."""
    fields = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        if rest.split() and rest.split()[0].isdigit():
            fields[name] = int(rest.split()[0]) * 1024  # /proc/meminfo counts kB
    if "MemAvailable" not in fields or "MemTotal" not in fields:
        return None
    available = fields["MemAvailable"] + fields.get("SwapFree", 0)
    total = fields["MemTotal"] + fields.get("SwapTotal", 0)
    limit = (cgroup or {}).get("memory.max", "max").strip()
    if limit.isdigit() and (cgroup or {}).get("memory.current", "").strip().isdigit():
        stat = dict(line.split()[:2] for line in cgroup.get("memory.stat", "").splitlines() if len(line.split()) >= 2)
        cache = int(stat["file"]) if stat.get("file", "").isdigit() else 0
        available = min(available, max(int(limit) - int(cgroup["memory.current"]) + cache, 0))
        total = min(total, int(limit))
    return available, total


def available_memory(device: torch.device) -> tuple[int, int] | None:
    """(free, total) bytes where a model's weights go: the GPU's free memory with what torch's allocator holds
    unused (a sweep's previous model, freed, stays reserved there, and the allocator hands it back when asked),
    or the host's available memory (`meminfo_available`); None where it cannot be read (not Linux)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device), total
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    cgroup = {}
    for name in ("memory.max", "memory.current", "memory.stat"):
        try:
            cgroup[name] = (Path("/sys/fs/cgroup") / name).read_text()
        except OSError:
            pass
    return meminfo_available(meminfo, cgroup)


def check_fits(checkpoint: Path, needed: int, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse, before minutes of reading, weights that cannot fit where they go: on a GPU the load would end in
    an out-of-memory error that blames the batch size, on the host the kernel would kill the process unannounced."""
    memory = available_memory(device)
    if memory is None or needed <= memory[0]:
        return
    free, total = memory
    where = f"{device} has {free / 1e9:.2f} GB free (of {total / 1e9:.2f} GB)" if device.type == "cuda" else \
        f"this machine has {free / 1e9:.2f} GB of memory available (of {total / 1e9:.2f} GB)"
    smaller = ", --dtype bfloat16" if dtype == torch.float32 else ""
    raise MinirunError(f"{checkpoint.name}'s weights need {needed / 1e9:.2f} GB in {str(dtype).removeprefix('torch.')} "
                       f"but {where}: free memory (other processes hold it), use a larger machine{smaller}, or a "
                       "smaller model")


def weight_bytes(model: Decoder, dtype: torch.dtype) -> int:
    """Bytes of `model`'s weights in `dtype`, a tied head once; `model` may be on the meta device."""
    state = model.state_dict()
    return sum(state[name].numel() for name in _hf_names(model.config)) * dtype.itemsize


def weights_size(checkpoint: str | Path, dtype: str | None, device: str) -> tuple[int, torch.dtype, torch.device]:
    """What loading `checkpoint` with `dtype` on `device` would hold, from its config.json alone: (bytes of its
    weights, the dtype and the device they would be in). For a plan (`sweep --dry-run`), also of another machine."""
    config = load_config(Path(checkpoint))
    where = checked_device(device, here=False)
    torch_dtype = resolve_dtype(dtype, config, where)
    with torch.device("meta"):
        return weight_bytes(Decoder(config), torch_dtype), torch_dtype, where


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None) -> Decoder:
    """Build the decoder on the meta device and assign checkpoint tensors into it."""
    checkpoint = Path(checkpoint)
    config = load_config(checkpoint)
    device = checked_device(device)
    torch_dtype = resolve_dtype(dtype, config, device)
    with torch.device("meta"):
        model = Decoder(config)
    expected = {n: p.shape for n, p in model.state_dict().items()}
    files = _weight_files(checkpoint)
    names = _hf_names(config)
    check_fits(checkpoint, weight_bytes(model, torch_dtype), torch_dtype, device)
    needed = {hf for group in names.values() for hf in group}
    optional = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = sorted(n for n in files if n not in needed and n not in optional and not n.endswith("rotary_emb.inv_freq"))
    if unexpected:
        raise MinirunError(f"unexpected tensor {unexpected[0]} in {files[unexpected[0]].name} ({len(unexpected)} in all): "
                           f"is this really a {config.model_type} checkpoint?")
    missing = sorted(n for n in needed if n not in files)
    if missing:
        raise MinirunError(f"missing tensor {missing[0]} ({len(missing)} in all) in {checkpoint}: the checkpoint is incomplete")
    handles = {path: _open(path) for path in set(files.values())}
    state = {}
    for ours, group in names.items():
        parts = [_read(handles[files[hf]], hf, files[hf]) for hf in group]
        tensor = torch.cat(parts) if len(parts) > 1 else parts[0]
        if tensor.shape != expected[ours] and len(parts) > 1:  # q, k and v are read as one: show each one's shape
            shapes = ", ".join(f"{name.split('.')[-2]} {tuple(part.shape)}" for name, part in zip(group, parts))
            sizes = "heads, key/value heads and head size need" if "q_proj" in group[0] else "intermediate_size needs"
            raise MinirunError(f"tensors {group[0].rsplit('.', 2)[0]}.* have shapes {shapes}, but config.json's "
                               f"{sizes} {tuple(expected[ours])} in all: config.json does not match the weights")
        if tensor.shape != expected[ours]:
            raise MinirunError(f"tensor {group[0]} has shape {tuple(parts[0].shape)}, expected a shape giving "
                               f"{tuple(expected[ours])} for {ours}: config.json does not match the weights")
        state[ours] = tensor.to(device=device, dtype=torch_dtype)
    if config.tie_word_embeddings:
        stored = files.get("lm_head.weight")
        head = None if stored is None else _read(handles[stored], "lm_head.weight", stored)
        if head is not None and not torch.equal(head.to(device=device, dtype=torch_dtype), state["embed.weight"]):
            # transformers 4 ties (drops the stored head), 5 keeps the stored head: the two give other logits
            raise MinirunError(f"config.json ties the output head to the embeddings, but {stored.name} holds a "
                               "different lm_head.weight: set tie_word_embeddings to false if that head is the trained "
                               "one, or delete it from the file")
        state["lm_head.weight"] = state["embed.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    model.inv_freq = model.inv_freq.to(device)  # made on the CPU with the model: buffers are not in the checkpoint
    return model.eval().requires_grad_(False)


def _read(handle, name: str, path: Path) -> torch.Tensor:
    """One stored tensor, refused unless it holds float weights: integer or float8 values are a quantization whose
    scales config.json does not name, and cast to float they would run as other weights, silently."""
    try:
        tensor = handle.get_tensor(name)
    except (SafetensorError, OSError) as e:
        if name not in handle.keys():
            raise MinirunError(f"{path.name} holds no tensor {name}, though model.safetensors.index.json names it "
                               "there: the index and shards come from different downloads; download them again") \
                from None
        raise MinirunError(f"cannot read tensor {name} from {path} ({e}): the file is truncated or corrupt") from None
    if not tensor.dtype.is_floating_point or tensor.dtype.itemsize < 2:
        raise MinirunError(f"tensor {name} in {path.name} is stored as {str(tensor.dtype).removeprefix('torch.')}: "
                           "minirun reads float weights (float32, float16, bfloat16), and this quantization is not "
                           "named in config.json; use the unquantized checkpoint, or a GGUF through `minirun convert`")
    return tensor
