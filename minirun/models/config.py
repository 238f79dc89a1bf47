"""Model configuration read from an HF-style `config.json`."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minirun.errors import MinirunError, is_number, is_texts

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
ROPE_KEYS = {"default": (), "linear": ("factor",), "dynamic": ("factor",), "yarn": (),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor")}
# What transformers' config classes assume for a key config.json leaves out, where the families differ.
CONTEXT_DEFAULT = {"llama": 2048, "mistral": 131072, "qwen2": 32768, "qwen3": 32768}
DEFAULT_THETA = 10000.0  # every family's rope base where config.json names none
# The rope settings that are numbers: True where only a positive one works, False where 0 is meaningful (None: a
# boolean).
ROPE_NUMBERS = {"rope_theta": True, "factor": True, "low_freq_factor": True, "high_freq_factor": True,
                "original_max_position_embeddings": True, "beta_fast": True, "beta_slow": True, "mscale": False,
                "mscale_all_dim": False, "attention_factor": True, "truncate": None}


def rope_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """The rope dict of a config: `rope_parameters` (transformers 5) or `rope_scaling` (4). Where both are set,
    transformers reads `rope_scaling` with the top-level `rope_theta` and drops `rope_parameters`; where the two
    differ in scaling or base, which one the model was trained with cannot be told, so neither is guessed. A
    top-level `original_max_position_embeddings` that disagrees with the dict's is refused alike."""
    for key in ("rope_parameters", "rope_scaling"):
        if raw.get(key) and not isinstance(raw[key], dict):
            raise MinirunError(f"config.json has {key} {raw[key]!r}: it must be an object of rope settings or null; "
                               "restore the checkpoint's own config.json")
    given = [dict(raw[key]) for key in ("rope_parameters", "rope_scaling") if raw.get(key)]

    def scaling(rope: dict) -> dict:
        rope = {("rope_type" if k == "type" else k): v for k, v in rope.items() if k != "rope_theta"}
        return {"rope_type": "default", **rope}

    if len(given) == 2:
        if scaling(given[0]) != scaling(given[1]):
            raise MinirunError(f"config.json sets rope_parameters {given[0]} and rope_scaling {given[1]}, which scale "
                               "positions differently (transformers reads rope_scaling and drops the other): keep the "
                               "one the model was trained with and delete the other")
        thetas = [rope.get("rope_theta", raw.get("rope_theta", DEFAULT_THETA)) for rope in given]
        if thetas[0] != thetas[1]:
            raise MinirunError(f"config.json's rope_parameters give rope_theta {thetas[0]} but its rope_scaling (with "
                               f"the top-level rope_theta) {thetas[1]}, which transformers reads: keep the one the "
                               "model was trained with and delete the other")
    rope = given[0] if given else {}
    part = rope.get("partial_rotary_factor", raw.get("partial_rotary_factor"))
    if part is not None and part != 1.0:  # null is no factor, as transformers reads it
        raise MinirunError(f"config.json sets partial_rotary_factor {part}: minirun rotates every dimension of a head, "
                           "as Llama and Qwen do; this checkpoint is another architecture")
    top = raw.get("original_max_position_embeddings")
    if top is not None and rope.get("original_max_position_embeddings", top) != top:
        raise MinirunError(f"config.json's original_max_position_embeddings {top} disagrees with its rope settings' "
                           f"{rope['original_max_position_embeddings']}: keep one value (transformers 5 uses the "
                           "top-level one)")
    return rope


@dataclass
class ModelConfig:
    """Everything the decoder needs; Llama, Mistral, Qwen2 and Qwen3 differ only in these fields.
    `max_position_embeddings` is the longest sequence minirun runs: the config's context, or Mistral's sliding
    window where that is shorter (a sequence within the window attends as with full causal attention)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    eos_token_ids: list[int] = field(default_factory=list)
    torch_dtype: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelConfig":
        """Map HF field names (both the transformers 4 and 5 spellings) onto ours."""
        model_type = raw.get("model_type")
        if model_type is None:
            raise MinirunError(f"config.json has no model_type: it must name the architecture, one of "
                               f"{', '.join(SUPPORTED_MODEL_TYPES)} (as transformers writes it)")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise MinirunError(
                f"unsupported model_type {model_type!r}: minirun supports {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if quant := raw.get("quantization_config"):
            method = quant.get("quant_method", "?") if isinstance(quant, dict) else "?"
            raise MinirunError(f"this checkpoint's weights are quantized ({method}), which minirun does not read: use "
                               "the unquantized (bfloat16/float16) checkpoint, or a GGUF through `minirun convert`")
        if raw.get("use_sliding_window"):
            raise MinirunError("use_sliding_window=true is not supported: set it to false in config.json (and any "
                               "layer_types entry to full_attention) where the model attends to its whole context")
        kinds = raw.get("layer_types") if model_type != "mistral" else None  # Mistral's window caps the context
        if kinds is not None and not is_texts(kinds):
            raise MinirunError(f"config.json has layer_types {kinds!r}: it must be a list of layer kinds; restore the "
                               "checkpoint's own config.json")
        if sliding := sorted(set(kinds or ()) - {"full_attention"}):  # transformers runs none without a window
            raise MinirunError(f"config.json's layer_types give layers {', '.join(map(repr, sliding))}, which minirun "
                               "does not run (every layer attends to the whole sequence): set them to full_attention "
                               "where the model attends to its whole context, else it needs another runtime")
        if missing := [key for key in REQUIRED if key not in raw]:
            raise MinirunError(f"config.json lacks {', '.join(map(repr, missing))}: restore the checkpoint's own config.json")
        _check_numbers(raw)
        if raw.get("hidden_act", "silu") not in ("silu", "swish"):  # transformers' two names for x * sigmoid(x)
            raise MinirunError(f"unsupported hidden_act {raw['hidden_act']!r}: minirun's MLP is SiLU-gated, as Llama's "
                               "and Qwen's are; this checkpoint is another architecture")
        heads = raw["num_attention_heads"]
        rope = rope_settings(raw)
        theta = rope.pop("rope_theta", raw.get("rope_theta", DEFAULT_THETA))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ROPE_KEYS:
            raise MinirunError(f"unsupported rope type {rope_type!r}: minirun supports {', '.join(ROPE_KEYS)}")
        _check_rope_numbers({**rope, "rope_theta": theta}, rope_type)
        context = raw.get("max_position_embeddings", CONTEXT_DEFAULT[model_type])
        if rope_type in ("llama3", "yarn"):  # transformers 5 takes the top-level value, else the context
            rope["original_max_position_embeddings"] = raw.get("original_max_position_embeddings",
                                                               rope.get("original_max_position_embeddings", context))
        if rope_type == "yarn" and rope.get("factor") is None:  # as transformers: the context's growth
            rope["factor"] = context / rope["original_max_position_embeddings"]
        if rope_type == "dynamic":  # the base depends on the context (prompts never pass it, so it stays fixed)
            rope["max_position_embeddings"] = context
        if missing := [key for key in ROPE_KEYS[rope_type] if rope.get(key) is None]:
            raise MinirunError(f"config.json's {rope_type} rope scaling lacks {', '.join(map(repr, missing))}: "
                               "restore the checkpoint's own config.json")
        window = raw.get("sliding_window") if model_type == "mistral" else None  # Mistral 7B v0.1: 4096
        if window is not None and not (isinstance(window, int) and not isinstance(window, bool) and window > 0):
            raise MinirunError(f"config.json's sliding_window {window!r} must be a positive integer or null: restore "
                               "the checkpoint's own config.json")
        # Mistral's projections have no bias whatever the key says (transformers' MistralAttention ignores it)
        attention_bias = bool(raw.get("attention_bias", False)) and model_type != "mistral"
        eos = raw.get("eos_token_id")
        return cls(
            model_type=model_type,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or (128 if model_type == "qwen3" else raw["hidden_size"] // heads),
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling={**rope, "rope_type": rope_type} if rope_type != "default" else None,
            max_position_embeddings=min(context, window or context),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=attention_bias if model_type != "qwen2" else False,
            mlp_bias=bool(raw.get("mlp_bias", False)) if model_type == "llama" else False,
            qk_norm=model_type == "qwen3",
            eos_token_ids=_eos_ids(eos, "config.json"),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
        )


def checkpoint_json(path: Path) -> dict:
    """A checkpoint's JSON file (config, generation config, tokenizer config) as the object it must hold, {} where
    there is none, or a one-line error naming the file: a run never starts on half a checkpoint."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MinirunError(f"{path} is not valid JSON ({e}): re-download the checkpoint or restore the file") from None
    if not isinstance(raw, dict):
        raise MinirunError(f"{path} holds a JSON {type(raw).__name__}, not an object: re-download the checkpoint or "
                           "restore the file")
    return raw


def _eos_ids(value: object, where: str) -> list[int]:
    ids = [] if value is None else [value] if isinstance(value, int) else value
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise MinirunError(f"{where} has eos_token_id {value!r}: it must be a token id or a list of them; restore the "
                           "checkpoint's own file")
    return ids


def _shown(value: object) -> str:
    return "null" if value is None else repr(value)


def _check_numbers(raw: dict) -> None:
    """The sizes a checkpoint's config.json gives are positive integers and its epsilon positive: a string, a float
    or a null there would fail deep inside the model (or a context of -5 be blamed on the prompt). Only the two
    sizes transformers derives from the heads where they are null may be null."""
    for key in (*REQUIRED, "num_key_value_heads", "head_dim", "max_position_embeddings"):
        if key not in raw or (raw[key] is None and key in ("num_key_value_heads", "head_dim")):
            continue
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MinirunError(f"config.json has {key} {_shown(value)}: it must be a positive integer; restore the "
                               "checkpoint's own config.json")
    if "rms_norm_eps" in raw and not (is_number(raw["rms_norm_eps"]) and raw["rms_norm_eps"] > 0):
        raise MinirunError(f"config.json has rms_norm_eps {_shown(raw['rms_norm_eps'])}: it must be a positive number; "
                           "restore the checkpoint's own config.json")
    heads, kv_heads = raw["num_attention_heads"], raw.get("num_key_value_heads") or raw["num_attention_heads"]
    if heads % kv_heads:
        raise MinirunError(f"config.json has {kv_heads} key/value heads for {heads} attention heads: the query heads "
                           "must share them evenly (a divisor); restore the checkpoint's own config.json")


def _check_rope_numbers(rope: dict, rope_type: str) -> None:
    """The rope settings' base, factors and lengths are positive numbers (a base of 0 gives NaN logits, a text
    fails deep inside), YaRN's temperature weights numbers and `truncate` a boolean, wherever they are spelled."""
    where = f"config.json's {rope_type} rope scaling" if rope_type != "default" else "config.json"
    for key, value in rope.items():
        if key not in ROPE_NUMBERS or (value is None and key != "rope_theta"):
            continue
        if key == "truncate":
            ok = isinstance(value, bool)
        else:
            ok = is_number(value) and (value > 0 if ROPE_NUMBERS[key] else value >= 0)
        if not ok:
            need = {None: "true or false", True: "a positive number", False: "a number, 0 or more"}[ROPE_NUMBERS[key]]
            raise MinirunError(f"{where} has {key} {_shown(value)}: it must be {need}; restore the checkpoint's own "
                               "config.json")


def load_config(checkpoint_dir: str | Path) -> ModelConfig:
    """Read `config.json` (and `generation_config.json` for extra eos ids) from a checkpoint dir."""
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        inside = [str(c.parent.relative_to(checkpoint_dir)) for depth in ("*", "*/*")  # models/name, models/org/name
                  for c in sorted(Path(checkpoint_dir).glob(f"{depth}/config.json"))]
        held = (f", which holds the checkpoints {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''}: point "
                "--model at one of those") if inside else ": point --model at an HF-style checkpoint directory"
        raise MinirunError(f"no config.json in {checkpoint_dir}{held}")
    config = ModelConfig.from_dict(checkpoint_json(path))
    gen_path = Path(checkpoint_dir) / "generation_config.json"
    extra = _eos_ids(checkpoint_json(gen_path).get("eos_token_id"), str(gen_path))
    config.eos_token_ids = list(dict.fromkeys(config.eos_token_ids + extra))
    return config
