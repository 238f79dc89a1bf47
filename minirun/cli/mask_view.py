"""`minirun mask`: draw the attention mask a method really uses, slot by slot.

The rows come from the runtime's own builders (encode_question, packed_row, plain_row,
stack_rows) and the mask from `segment_mask`, so a picture cannot drift from what the model
attends to. Slots follow the cache: a separately prefilled shared head first, then the
left-padded rows, then `decode_steps` generated slots.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from minirun.engine.generate import plain_row, stack_rows
from minirun.engine.llm import LLM
from minirun.errors import MinirunError
from minirun.eval.data import ensemble_prompts
from minirun.figures import literal_text, save_figure
from minirun.layers.masks import PAD, SHARED, materialize, segment_mask
from minirun.methods import METHODS, EnsembleOptions
from minirun.methods.packing import POSITION_SCHEMES, Encoded, encode_question, no_shared_tail, packed_row
from minirun.methods.runner import fusion_layer as resolve_fusion_layer

GEN, PAD_TEXT = "<gen>", "<pad>"
LABEL_LIMIT = 80  # beyond this many slots token text no longer fits on the axes
# the most slots a PNG draws: its memory grows with their square (3000 slots took 8.3 GB, 1000 1.5 GB)
PNG_LIMIT = 1024
DPI = 100
SHARED_RGB = (0.6, 0.6, 0.6)
GEN_RGB = (1.0, 0.8, 0.0)
PAD_RGB = (0.0, 0.0, 0.0)
HIDDEN_RGB = (1.0, 1.0, 1.0)
_PALETTE = (0, 1, 2, 3, 4, 5, 6, 9)  # tab10 without its grey and olive, which look like shared/generated


@dataclass
class RowView:
    """One batch row over all slots: dense mask [L, L] plus per-slot segment, position, text."""

    mask: torch.Tensor
    segments: list[int]
    positions: list[int]
    tokens: list[str]


@dataclass
class MaskView:
    """Every row a method prefills and decodes; slots >= prompt_len are generated."""

    method: str
    rows: list[RowView]
    prompt_len: int
    num_paraphrases: int
    fusion_layer: int | None = None  # hidden_avg: rows' newest states are fused from this block on

    @property
    def name(self) -> str:
        """The method as titles show it (hidden_avg names its fusion layer)."""
        return f"{self.method} (fused from block {self.fusion_layer})" if self.fusion_layer else self.method

    @property
    def length(self) -> int:
        return len(self.rows[0].segments)

    def kind(self, row: int, slot: int) -> str | int:
        """'pad', 'gen', 'shared' or the paraphrase number: what colours a key slot."""
        seg = self.rows[row].segments[slot]
        if seg == PAD:
            return "pad"
        if slot >= self.prompt_len:
            return "gen"
        return "shared" if seg == SHARED else seg


def build_view(llm: LLM, question: str, paraphrases: list[str], method: str = "flex", prefix: str = "", suffix: str = "",
               chat: bool | None = None, positions: str = "right", share_prefix: bool = True,
               decode_steps: int = 3, fusion_layer: int | None = None) -> MaskView:
    """The view for one question as `minirun generate` runs it: the question is paraphrase 1.
    hidden_avg draws like avg (its masks are avg's), titled with the block it fuses from."""
    prompts = ensemble_prompts(question, paraphrases)  # as generate: a repeat of the question (case, spacing) dropped
    prompts = prompts[:1] if method == "origin" else prompts
    enc = encode_question(llm, prompts, prefix, suffix, chat)
    view = view_from_encoded(enc, method, lambda i: llm.tokenizer.decode([i]), llm.pad_id, positions,
                             share_prefix, decode_steps, context=llm.config.max_position_embeddings)
    if method == "hidden_avg":
        view.fusion_layer = resolve_fusion_layer(EnsembleOptions(fusion_layer=fusion_layer), llm.config.num_layers)
    return view


def view_from_encoded(enc: Encoded, method: str, decode: Callable[[int], str], pad_id: int, positions: str = "right",
                      share_prefix: bool = True, decode_steps: int = 3, context: int | None = None) -> MaskView:
    """Rows exactly as `run_method` builds them for one question (see methods/runner.py); refused, as generating
    would be, where a row's prompt and `decode_steps` reach past the model's `context`."""
    if method not in METHODS:
        raise MinirunError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if positions not in POSITION_SCHEMES:
        raise MinirunError(f"unknown position scheme {positions!r}: choose {', '.join(POSITION_SCHEMES)}")
    if method == "flex" and not enc.tail:
        raise no_shared_tail("the first answer token")
    head = enc.head if share_prefix and enc.head else []
    n = len(enc.paraphrases)
    if method == "flex":
        rows = [packed_row(enc, positions, share_head=share_prefix, prefilled=len(head))]
    else:
        rows = [plain_row(enc.body(i), len(head)) if head else plain_row(enc.full(i)) for i in range(n)]
    layout = stack_rows(rows, pad_id, torch.device("cpu"))
    batch, h = len(rows), len(head)
    prompt_len = h + layout.length
    steps = torch.arange(decode_steps)
    segments = torch.cat([torch.full((batch, h), SHARED, dtype=torch.int32), layout.segments,
                          torch.full((batch, decode_steps), SHARED, dtype=torch.int32)], dim=1)
    pos = torch.cat([torch.arange(h).expand(batch, h), layout.positions,
                     layout.next_positions[:, None] + steps[None]], dim=1)
    if context is not None and (furthest := int(layout.next_positions.max()) + decode_steps) > context:
        raise MinirunError(f"prompt + {decode_steps} decode steps reach position {furthest}, beyond the model's "
                            f"context of {context}: shorten the prompts (fewer or shorter paraphrases, a shorter "
                            "prefix) or show fewer --decode-steps")
    slots = prompt_len + decode_steps
    mask = materialize(segment_mask(segments), batch, slots, slots)
    views = []
    for b in range(batch):
        ids = head + layout.tokens[b].tolist()
        texts = [PAD_TEXT if s == PAD else decode(i) for i, s in zip(ids, segments[b, :prompt_len].tolist())]
        views.append(RowView(mask[b].clone(), segments[b].tolist(), pos[b].tolist(), texts + [GEN] * decode_steps))
    return MaskView(method, views, prompt_len, n)


def paraphrase_rgb(k: int) -> tuple[float, float, float]:
    from matplotlib import colormaps

    return tuple(float(c) for c in colormaps["tab10"](_PALETTE[(k - 1) % len(_PALETTE)])[:3])


def kind_rgb(kind: str | int) -> tuple[float, float, float]:
    return {"pad": PAD_RGB, "gen": GEN_RGB, "shared": SHARED_RGB}.get(kind) or paraphrase_rgb(int(kind))


def _rgb(colours) -> torch.Tensor:
    return torch.tensor(colours, dtype=torch.float64)


def _image(view: MaskView, row: int) -> torch.Tensor:
    """[L, L, 3] colours of every cell (q, kv): padding black, visible cells the colour of the key's
    kind, hidden ones white."""
    r = view.rows[row]
    keys = _rgb([kind_rgb(view.kind(row, s)) for s in range(view.length)])
    image = torch.where(r.mask[..., None], keys[None], _rgb(HIDDEN_RGB))
    pad = torch.tensor(r.segments) == PAD
    image[pad] = _rgb(PAD_RGB)
    image[:, pad] = _rgb(PAD_RGB)
    return image


@dataclass
class Panel:
    """Where a row's mask landed in the PNG, in pixels from the image's top-left corner."""

    left: float
    top: float
    width: float
    height: float


def _label(text: str, width: int = 10) -> str:
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= width else text[: width - 1] + "~"


@literal_text
def render_png(view: MaskView, path: str | Path) -> list[Panel]:
    """Write the mask panels (query down, key across) with position bars and a legend."""
    if view.length > PNG_LIMIT:
        raise MinirunError(f"the mask spans {view.length} slots, and a picture draws at most {PNG_LIMIT} (its memory "
                           "grows with their square): fewer --decode-steps or a shorter prompt, or the text rendering "
                           "(drop --out)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    size = view.length
    labels = size <= LABEL_LIMIT
    cell = 0.16 if labels else max(6.0 / size, 0.03)
    side = size * cell
    left, top, gap, bars, bottom = (1.1 if labels else 0.5), (1.2 if labels else 0.5), 0.2, 0.9, 0.9
    panel_w = left + side + 0.3
    fig_w, fig_h = panel_w * len(view.rows) + 0.2, top + side + gap + bars + bottom
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI)
    FigureCanvasAgg(fig)
    mask_axes = []
    for b, r in enumerate(view.rows):
        x0 = (b * panel_w + left) / fig_w
        ax = fig.add_axes((x0, (bottom + bars + gap) / fig_h, side / fig_w, side / fig_h))
        image = _image(view, b)
        ax.imshow(image.numpy(), interpolation="nearest", aspect="auto", extent=(-0.5, size - 0.5, size - 0.5, -0.5))
        title = f"{view.name} row {b}: prompt {b + 1}" if len(view.rows) > 1 else view.name
        ax.set_title(title, fontsize=9, pad=4 if not labels else 52)
        pos_ax = fig.add_axes((x0, bottom / fig_h, side / fig_w, bars / fig_h))
        colors = [kind_rgb(view.kind(b, s)) for s in range(size)]
        pos_ax.bar(range(size), [p if s != PAD else 0 for p, s in zip(r.positions, r.segments)],
                   width=1.0, color=colors, edgecolor="none")
        pos_ax.set_xlim(-0.5, size - 0.5)
        pos_ax.set_ylabel("position", fontsize=7)
        pos_ax.tick_params(labelsize=6)
        if labels:
            texts = [_label(t) for t in r.tokens]
            ax.xaxis.tick_top()
            ax.set_xticks(range(size), texts, rotation=90, fontsize=5)
            ax.set_yticks(range(size), texts, fontsize=5)
            pos_ax.set_xticks(range(size), [str(p) if s != PAD else "" for p, s in zip(r.positions, r.segments)],
                              rotation=90, fontsize=5)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        mask_axes.append(ax)
    present = {view.kind(b, s) for b in range(len(view.rows)) for s in range(size)}
    kinds = [k for k in ["shared", *range(1, view.num_paraphrases + 1), "gen", "pad"] if k in present]
    names = {"shared": "prefix / shared", "gen": "generated", "pad": "padding"}
    handles = [Patch(facecolor=kind_rgb(k), edgecolor="black", label=names.get(k, f"paraphrase {k}")) for k in kinds]
    handles.append(Patch(facecolor=HIDDEN_RGB, edgecolor="black", label="not visible"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    fig.canvas.draw()
    height = fig.bbox.height
    panels = []
    for ax in mask_axes:
        box = ax.get_window_extent()
        panels.append(Panel(float(box.x0), float(height - box.y1), float(box.width), float(box.height)))
    save_figure(fig, path, dpi=DPI)
    return panels


# paraphrases 1 to 59 ("P" and "G" are the shared prompt and generated tokens); "+" beyond
SEGMENT_CHARS = "123456789abcdefghijklmnopqrstuvwxyzABCDEFHIJKLMNOQRSTUVWXYZ"


def segment_char(kind: str | int) -> str:
    if kind in ("shared", "gen"):
        return {"shared": "P", "gen": "G"}[kind]
    return SEGMENT_CHARS[int(kind) - 1] if int(kind) <= len(SEGMENT_CHARS) else "+"  # never another's symbol


def render_text(view: MaskView, width: int = 8) -> str:
    """One line per query slot: token, position, one char per key slot (' ' padding, '.' hidden)."""
    lines = ["# a row per query token (its text, its position), a column per key it may see: P shared prompt, "
             "1-9 a-z A-Z but G, P the paraphrase it belongs to (+ past the 59th), G generated, . hidden, blank "
             "padding"]
    for b, r in enumerate(view.rows):
        lines.append(f"# {view.name} row {b}")
        for q in range(view.length):
            pad = r.segments[q] == PAD
            cells = "".join(" " if r.segments[kv] == PAD else segment_char(view.kind(b, kv)) if r.mask[q, kv] else "."
                            for kv in range(view.length))
            position = "-" if pad else str(r.positions[q])
            lines.append(f"{_label(r.tokens[q], width):<{width}} {position:>4} {cells}")
    return "\n".join(lines) + "\n"
