"""Convert a llama.cpp GGUF file into an HF-style checkpoint directory that minirun (and transformers) load.

GGUF is how many small models ship (often only that way), but minirun reads safetensors plus
`config.json`/`tokenizer.json`. Conversion dequantizes every tensor to a plain float dtype, undoes
llama.cpp's renaming and Llama q/k row permutation, and rebuilds config and tokenizer from the metadata.
It works tensor by tensor, streaming into the safetensors file, so peak memory stays near one tensor.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

from minirun.checkpoints.gguf_tokenizer import build_tokenizer
from minirun.checkpoints.loader import file_sha256, write_source
from minirun.errors import MinirunError, error_line
from minirun.layers.rope import inv_frequencies
from minirun.paths import left_by_dead_writer, name_the_file

log = logging.getLogger(__name__)

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
DTYPES = {"bfloat16": (torch.bfloat16, "BF16"), "float16": (torch.float16, "F16"), "float32": (torch.float32, "F32")}
_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
GGUF_BIASES = {"qwen2": ("attn_q", "attn_k", "attn_v")}  # the only bias tensors these architectures' files hold
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
CHUNK_ELEMENTS = 1 << 22  # dequantized a piece at a time: 16 MB of float32
ROPE_FREQS = "rope_freqs.weight"  # llama3 rope scaling as per-frequency divisors: read into config.json, not a weight
# Meta's llama3 scaling constants (Llama 3.1, 3.2); llama.cpp keeps only the divisors they produce.
LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def hf_name(gguf_name: str) -> str:
    """llama.cpp tensor name -> HF name, e.g. `blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    stem, _, kind = gguf_name.rpartition(".")
    if stem in _TOP_LEVEL and kind == "weight":
        return f"{_TOP_LEVEL[stem]}.weight"
    match = _LAYER_NAME.fullmatch(gguf_name)
    if match and match[2] in _LAYER:
        return f"model.layers.{match[1]}.{_LAYER[match[2]]}.{match[3]}"
    raise MinirunError(f"GGUF tensor {gguf_name!r} has no HF counterpart: this model variant is not supported")


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's q/k permutation (its rotary layout interleaves each head's two halves)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _value(field: Any) -> Any:
    """A GGUF metadata value as a plain Python value (arrays of strings/ints as lists)."""
    value = field.contents()
    if field.types and field.types[0] == GGUFValueType.FLOAT32:
        return float(str(np.float32(value)))  # 1e-05, not 9.999999747378752e-06
    return value


def read_gguf(path: str | Path) -> tuple[GGUFReader, dict[str, Any]]:
    """Open a GGUF (memory-mapped) and decode its metadata, turning unreadable files into MinirunError."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob("*.gguf"))
        hint = f"give the file inside it, {found[0]}" if len(found) == 1 else "give the .gguf file's path"
        raise MinirunError(f"{path} is a folder, not a GGUF file: {hint}")
    if not path.is_file():
        raise MinirunError(f"GGUF file {path} does not exist: check the path")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise MinirunError(f"{path} is not a GGUF file (it does not begin with GGUF's magic bytes): convert reads "
                               "llama.cpp's .gguf files; a safetensors checkpoint folder loads as it is (--model DIR)")
    try:
        reader = GGUFReader(path)
        meta = {name: _value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    except (ValueError, IndexError, KeyError, OSError, UnicodeDecodeError) as e:
        if "version" in str(e).lower():  # gguf-py's words for a GGUF of a format version it does not know
            raise MinirunError(f"cannot read {path}: {e} (the gguf package reads GGUF versions 2 and 3); convert it "
                               "with a current llama.cpp, or upgrade the gguf package") from None
        raise MinirunError(
            f"cannot read {path} as GGUF ({e}): the file is truncated or corrupt, download it again"
        ) from None
    return reader, meta


def llama3_scaling(divisors: np.ndarray, theta: float, head_dim: int) -> dict[str, Any]:
    """The llama3 `rope_scaling` whose frequencies are llama.cpp's `rope_freqs` divisors: the factor is
    the largest divisor, the other constants Meta's, checked against every divisor."""
    scaling = {"rope_type": "llama3", "factor": float(divisors.max()), **LLAMA3_ROPE}
    implied = (inv_frequencies(head_dim, theta) / inv_frequencies(head_dim, theta, scaling)).numpy()
    if implied.shape != divisors.shape or not np.allclose(implied, divisors, rtol=1e-5, atol=0):
        raise MinirunError(f"GGUF tensor {ROPE_FREQS} is not llama3 rope scaling with Meta's constants "
                           f"({', '.join(f'{k} {v:g}' for k, v in LLAMA3_ROPE.items())}): this model variant is "
                           "not supported; convert the original checkpoint instead")
    return scaling


def build_config(meta: dict[str, Any], tensor_names: set[str], vocab_size: int, dtype: str,
                 rope_divisors: np.ndarray | None = None) -> dict[str, Any]:
    """HF `config.json` from GGUF metadata (`<arch>.*` keys as written by llama.cpp's convert script)
    and, for Llama 3.1/3.2, the `rope_freqs` tensor's divisors."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise MinirunError(
            f"GGUF architecture {arch!r} is not supported: minirun converts {', '.join(ARCHITECTURES)}; give the GGUF "
            "of a Llama or Qwen model"
        )

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise MinirunError(f"GGUF metadata lacks {arch}.{key}: the file is incomplete, download it again")
        return value

    hidden, heads = get("embedding_length"), get("attention.head_count")
    for key in ("bos", "eos", "eot", "eom", "padding"):  # an id past the vocabulary: no token of it, a corrupt file
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        if index is not None and not 0 <= index < vocab_size:
            raise MinirunError(f"GGUF tokenizer.ggml.{key}_token_id {index} is outside its {vocab_size}-token "
                               "vocabulary: the file is corrupt; download it again")
    config = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "head_dim": get("attention.key_length", hidden // heads),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "rope_theta": get("rope.freq_base", 10000.0),
        "max_position_embeddings": get("context_length"),
        "vocab_size": meta.get(f"{arch}.vocab_size", vocab_size),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "torch_dtype": dtype,
    }
    _check_attention(meta, arch, config["head_dim"], tensor_names)
    # as llama.cpp reads them: a file naming no type scales linearly by its factor (or by the key files before
    # November 2023 wrote it under, rope.scale_linear), and a factor of 0 or 1, or none, does not scale
    scaling = meta.get(f"{arch}.rope.scaling.type", "linear")
    if scaling not in ("none", "linear", "yarn"):
        raise MinirunError(f"GGUF rope scaling {scaling!r} is not supported: minirun converts none, linear, yarn and "
                           f"llama3 (Meta's, read from {ROPE_FREQS}); pull the original HF checkpoint instead")
    factor = meta.get(f"{arch}.rope.scaling.factor", meta.get(f"{arch}.rope.scale_linear"))
    if scaling == "linear" and factor in (None, 0, 1):
        scaling = "none"
    if scaling == "linear":
        config["rope_scaling"] = {"rope_type": "linear", "factor": factor}
    if scaling == "yarn":
        if tuned := sorted(key.split(".")[-1] for key in meta if key.startswith(f"{arch}.rope.scaling.yarn_")):
            raise MinirunError(f"GGUF yarn rope scaling sets {', '.join(tuned)}, which minirun does not map onto "
                               "transformers' yarn settings: pull the original HF checkpoint instead")
        config["rope_scaling"] = {"rope_type": "yarn", "factor": get("rope.scaling.factor"),
                                  "original_max_position_embeddings": get("rope.scaling.original_context_length")}
    if rope_divisors is not None:
        if scaling != "none":
            raise MinirunError(f"GGUF has both rope scaling {scaling!r} and {ROPE_FREQS}: the file is inconsistent")
        config["rope_scaling"] = llama3_scaling(rope_divisors, config["rope_theta"], config["head_dim"])
    if arch == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    else:
        config.update(use_sliding_window=False, attention_bias=arch == "qwen2")
    return config


def _check_attention(meta: dict[str, Any], arch: str, head_dim: int, tensor_names: set[str]) -> None:
    """Refuse what llama.cpp would compute and a transformers config cannot say: a rotation of part of each head, a
    YaRN attention factor or an attention scale of its own, and biases the architecture's HF classes do not hold."""
    rotated = meta.get(f"{arch}.rope.dimension_count", head_dim)
    if rotated != head_dim:
        raise MinirunError(f"GGUF {arch}.rope.dimension_count {rotated} rotates part of each {head_dim}-wide head, "
                           "which minirun does not: this model variant is not supported")
    factor = meta.get(f"{arch}.rope.scaling.attn_factor", 1.0)
    scale = meta.get(f"{arch}.attention.scale", 0.0)  # llama.cpp: 0 is 1/sqrt(head_dim)
    if factor != 1.0 or (scale and not math.isclose(scale, head_dim ** -0.5, rel_tol=1e-6)):
        key, value = ("rope.scaling.attn_factor", factor) if factor != 1.0 else ("attention.scale", scale)
        raise MinirunError(f"GGUF {arch}.{key} {value:g} changes the attention's scale, which minirun does not map "
                           "onto a transformers config: pull the original HF checkpoint instead")
    allowed = GGUF_BIASES.get(arch, ())
    if biases := sorted(name for name in tensor_names if name.endswith(".bias")
                        and name.split(".")[-2] not in allowed):
        raise MinirunError(f"GGUF tensor {biases[0]} ({len(biases)} bias tensors in all): minirun converts {arch} "
                           "files without such biases (llama.cpp's layout of them is not mapped): this model variant "
                           "is not supported; convert the original checkpoint instead")


def _dequantize(data: np.ndarray, tensor: Any) -> np.ndarray:
    try:
        return dequantize(data, tensor.tensor_type)
    except NotImplementedError:
        kind = tensor.tensor_type.name
        raise MinirunError(f"GGUF tensor {tensor.name} has type {kind}, which the gguf package cannot dequantize: "
                           "upgrade gguf where it is a newer quantization; else it is no weight type llama.cpp "
                           "writes, and the file is corrupt") from None


def _float32_chunks(tensor: Any, config: dict[str, Any]) -> Iterator[np.ndarray]:
    """One GGUF tensor as float32 rows in HF layout, a few MB at a time so memory stays flat."""
    rows = tensor.data.reshape(-1, tensor.data.shape[-1])
    if config["model_type"] == "llama" and tensor.name.endswith(("attn_q.weight", "attn_k.weight")):
        heads = config["num_attention_heads" if ".attn_q." in tensor.name else "num_key_value_heads"]
        yield unpermute_rows(_dequantize(rows, tensor).reshape(rows.shape[0], -1), heads)
        return
    step = max(1, CHUNK_ELEMENTS // int(tensor.shape[0]))
    for start in range(0, rows.shape[0], step):
        yield _dequantize(rows[start : start + step], tensor)


def write_safetensors(path: Path, reader: GGUFReader, config: dict[str, Any], dtype: str) -> None:
    """Stream every tensor into `path`: the header is known from the GGUF shapes, data follows tensor by tensor."""
    torch_dtype, code = DTYPES[dtype]
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    entries = sorted(((hf_name(t.name), t) for t in reader.tensors if t.name != ROPE_FREQS), key=lambda item: item[0])
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, tensor in entries:
        shape = [int(d) for d in reversed(tensor.shape)]
        size = int(np.prod(shape)) * itemsize
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for _, tensor in entries:
            for chunk in _float32_chunks(tensor, config):
                floats = torch.from_numpy(np.require(chunk, np.float32, ["C", "W"]))
                if not floats.isfinite().all():
                    raise MinirunError(f"GGUF tensor {tensor.name} holds non-finite values: the file is corrupt; "
                                       "download it again")
                narrowed = floats.to(torch_dtype)
                if not narrowed.isfinite().all():
                    raise MinirunError(f"GGUF tensor {tensor.name} holds values past {dtype}'s range: convert with "
                                       "--dtype bfloat16 or float32")
                f.write(narrowed.view(torch.uint8).numpy())


def _partial_prefix(final: Path) -> str:
    return f".{final.name}.partial-"


def partial_dirs(final: Path) -> list[Path]:
    """The hidden folders `staged_dir` is writing (or was, when its process was killed) for `final`."""
    return sorted(final.parent.glob(_partial_prefix(final) + "*"))


def remove_stale_partials(final: Path) -> None:
    """Delete the hidden folders killed writers of `final` left (a whole checkpoint's size each, kept for good): those
    of a process that no longer runs here (its pid follows the prefix), untouched for STALE_TEMP_SECONDS, so a live
    writer's, another machine's on a shared folder too, is never taken."""
    for folder in partial_dirs(final):
        if left_by_dead_writer(folder, folder.name[len(_partial_prefix(final)):].partition("-")[0]):
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty sibling temp dir that becomes `final` only if the block finishes.

    An interrupted run (error, Ctrl-C) removes the temp dir, so `final` never exists half-written.
    """
    shown, final = Path(final), Path(final).resolve()  # "." has itself as its parent: stage beside the real one
    if final == Path.cwd().resolve():  # replaced, the folder would leave the shell that runs this in a deleted one
        raise MinirunError(f"{shown} is the folder this command runs in: give a new folder for the output, such as "
                           f"{shown / 'model'}")
    if (above := next((folder for folder in final.parents if folder.exists()), None)) and not above.is_dir():
        raise MinirunError(f"{above} is a file, so {shown} cannot be made: choose an output directory in a folder")
    if final.exists() and not final.is_dir():
        raise MinirunError(f"{shown} is a file: give an output directory")
    if final.exists() and any(final.iterdir()):
        raise MinirunError(f"{shown} already exists and is not empty: remove it or choose another output directory")
    created = list(itertools.takewhile(lambda folder: not folder.exists(), [final.parent, *final.parent.parents]))
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(final)}{os.getpid()}-", dir=final.parent))
    except OSError as e:  # named as the folder asked for, not the hidden one staged beside it
        _remove_empty(created)
        raise MinirunError(f"cannot write {shown} ({e.strerror}): choose an output directory you can write to") \
            from None
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary model dir
    try:
        yield tmp
        if final.exists():
            try:
                final.rmdir()
            except OSError:  # not empty: a process writing the same folder finished first
                raise MinirunError(f"{shown} was written by another process while this one worked: it holds that "
                                   "one's result; remove it and run again, or choose another output directory") \
                    from None
        tmp.rename(final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        name_the_file(e, shown)  # a full disk's error names no file: the folder being written
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders made for an output that was not written, deepest first, unless something else is in them."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "bfloat16",
                 source: dict | None = None) -> Path:
    """Write `out_dir` as an HF checkpoint (config, safetensors, tokenizer) converted from a GGUF file, recording
    the GGUF's name and SHA-256 (and `source`'s entries: where the GGUF came from) as its source."""
    if dtype not in DTYPES:
        raise MinirunError(f"unsupported dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    start = time.perf_counter()
    reader, meta = read_gguf(gguf_path)
    names = {t.name for t in reader.tensors}
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise MinirunError(f"{gguf_path} has no tokenizer.ggml.tokens vocabulary: cannot build a tokenizer")
    divisors = next((np.asarray(t.data, dtype=np.float32).ravel() for t in reader.tensors if t.name == ROPE_FREQS), None)
    config = build_config(meta, names, len(tokens), dtype, divisors)
    tokenizer, tokenizer_config = build_tokenizer(meta)
    tokenizer_config["model_max_length"] = config["max_position_embeddings"]
    specials = {k: v for k, v in tokenizer_config.items() if k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id") if config[k] is not None}
    # llama.cpp also stops at end-of-turn and end-of-message tokens (Llama 3's <|eot_id|>, Qwen's <|endoftext|>)
    stops = [meta.get(f"tokenizer.ggml.{kind}_token_id") for kind in ("eos", "eot", "eom")]
    stops = list(dict.fromkeys(i for i in stops if i is not None))
    if stops:
        generation["eos_token_id"] = stops if len(stops) > 1 else stops[0]
    if meta.get("tokenizer.ggml.padding_token_id") is not None:
        generation["pad_token_id"] = meta["tokenizer.ggml.padding_token_id"]
    remove_stale_partials(Path(out_dir).resolve())
    with staged_dir(Path(out_dir)) as tmp:
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", generation)
        _write_json(tmp / "tokenizer_config.json", tokenizer_config)
        _write_json(tmp / "special_tokens_map.json", specials)
        try:
            tokenizer.save(str(tmp / "tokenizer.json"))
        except Exception as e:  # the tokenizers library's failed write (a full disk) is a bare Exception
            raise MinirunError(f"cannot write {Path(out_dir) / 'tokenizer.json'} ({error_line(e)}): free space on "
                               "that disk, or choose another output directory") from None
        write_safetensors(tmp / "model.safetensors", reader, config, dtype)
        write_source(tmp, {"gguf": Path(gguf_path).name, "gguf_sha256": file_sha256(Path(gguf_path)), "dtype": dtype,
                           **(source or {})})
    log.info("converted %s -> %s (%s) in %.1fs", gguf_path, out_dir, dtype, time.perf_counter() - start)
    return Path(out_dir)
