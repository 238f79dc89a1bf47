"""`minirun mask` pictures must show the mask the runtime uses, cell for cell."""
from __future__ import annotations

import pytest
import torch
from matplotlib.image import imread

import minirun
from minirun.cli.mask_view import (
    GEN,
    HIDDEN_RGB,
    PAD_RGB,
    PAD_TEXT,
    build_view,
    kind_rgb,
    render_png,
    render_text,
    view_from_encoded,
)
from minirun.engine.generate import plain_row, stack_rows
from minirun.errors import MinirunError
from minirun.layers.masks import PAD, SHARED, materialize, segment_mask
from minirun.methods.packing import Encoded, encode_question


@pytest.fixture(scope="module")
def llm(checkpoint_dirs):
    return minirun.load(checkpoint_dirs["qwen2"])


def cell_rgb(view, row: int, q: int, kv: int) -> tuple[float, float, float]:
    """The colour cell (q, kv) must have, worked out cell by cell: padding black, allowed cells by the
    key's kind, hidden white (the picture computes it vectorised)."""
    r = view.rows[row]
    if PAD in (r.segments[q], r.segments[kv]):
        return PAD_RGB
    return kind_rgb(view.kind(row, kv)) if r.mask[q, kv] else HIDDEN_RGB


def cell_center(panel, size: int, q: int, kv: int) -> tuple[int, int]:
    """(pixel row, pixel column) at the centre of cell (q, kv) of a size x size mask panel."""
    return int(panel.top + (q + 0.5) * panel.height / size), int(panel.left + (kv + 0.5) * panel.width / size)


def _check_pixels(view, tmp_path, samples: int = 400) -> None:
    """Sampled cell centres of the saved PNG have the colour the mask says (and every hidden cell is white)."""
    panels = render_png(view, tmp_path / "mask.png")
    image = imread(tmp_path / "mask.png")[..., :3]
    size = view.length
    gen = torch.Generator().manual_seed(0)
    cells = torch.randint(0, size, (samples, 2), generator=gen).tolist()
    cells += [[q, q] for q in range(size)] + [[size - 1, kv] for kv in range(size)]  # diagonal and last (generated) row
    for b, panel in enumerate(panels):
        dense = materialize(segment_mask(torch.tensor([view.rows[b].segments])), 1, size, size)[0]
        for q, kv in cells:
            y, x = cell_center(panel, size, q, kv)
            expected = cell_rgb(view, b, q, kv)
            assert tuple(image[y, x]) == pytest.approx(expected, abs=1 / 255), (b, q, kv)
            if PAD not in (view.rows[b].segments[q], view.rows[b].segments[kv]):
                assert (expected != HIDDEN_RGB) == bool(dense[q, kv]), (b, q, kv)


@pytest.mark.parametrize("prefix", ["", "Answer briefly. "])
def test_flex_png_matches_mask(llm, tmp_path, prefix):
    view = build_view(llm, "Who wrote Hamlet?", ["Hamlet author?", "Who is the author of Hamlet?"],
                      method="flex", prefix=prefix, decode_steps=3)
    assert len(view.rows) == 1
    row = view.rows[0]
    assert row.tokens[-3:] == [GEN] * 3 and row.segments[-3:] == [SHARED] * 3
    assert set(row.segments) == {SHARED, 1, 2, 3}
    assert row.positions[-3:] == [row.positions[view.prompt_len - 1] + i for i in (1, 2, 3)]
    _check_pixels(view, tmp_path)


def test_logit_view_one_panel_per_row_with_padding(llm, tmp_path):
    view = build_view(llm, "Who wrote Hamlet?", ["Hamlet author?"], method="avg", decode_steps=2)
    assert len(view.rows) == 2
    padded = [r for r in view.rows if PAD in r.segments]
    assert len(padded) == 1
    pad_row = padded[0]
    pad_slots = [i for i, s in enumerate(pad_row.segments) if s == PAD]
    assert all(pad_row.tokens[i] == PAD_TEXT for i in pad_slots)
    head = pad_slots[0]  # the shared chat header sits before the padding, in every row
    assert head > 0 and all(r.segments[:head] == [SHARED] * head for r in view.rows)
    assert all(r.tokens[:head] == pad_row.tokens[:head] for r in view.rows)
    assert all(cell_rgb(view, view.rows.index(pad_row), q, pad_slots[0]) == PAD_RGB for q in range(view.length))
    assert len(render_png(view, tmp_path / "avg.png")) == 2
    _check_pixels(view, tmp_path, samples=150)


def test_token_texts_are_drawn_as_written(llm, tmp_path):
    """A token that reads as mathtext ("$$", LaTeX's display maths, is one in many vocabularies) is a label like any
    other: matplotlib would fail to parse it and stop `minirun mask --out` with a traceback."""
    view = build_view(llm, "Who wrote $x$?", ["Hamlet author?"], method="flex", decode_steps=1)
    view.rows[0].tokens[:2] = ["$$", "a$b_$"]
    assert len(render_png(view, tmp_path / "dollars.png")) == 1
    assert imread(tmp_path / "dollars.png").shape[-1] in (3, 4)


def test_a_picture_too_large_to_draw_is_refused(llm, tmp_path, monkeypatch):
    """A PNG's memory grows with the square of its slots (8000 decode steps were killed for memory, silently): past
    PNG_LIMIT it is refused in one line, naming the text rendering."""
    from minirun.cli import mask_view

    view = build_view(llm, "Who wrote Hamlet?", ["Hamlet author?"], method="flex", decode_steps=2)
    monkeypatch.setattr(mask_view, "PNG_LIMIT", view.length - 1)
    with pytest.raises(MinirunError, match=f"the mask spans {view.length} slots, and a picture draws at most "
                                           f"{view.length - 1} .*or the text rendering .drop --out."):
        render_png(view, tmp_path / "big.png")
    assert not (tmp_path / "big.png").exists()


def test_hidden_avg_draws_like_avg_with_its_fusion_layer(llm):
    avg = build_view(llm, "Who wrote Hamlet?", ["Hamlet author?"], method="avg", decode_steps=2)
    hidden = build_view(llm, "Who wrote Hamlet?", ["Hamlet author?"], method="hidden_avg", decode_steps=2)
    assert [r.segments for r in hidden.rows] == [r.segments for r in avg.rows]
    assert all(torch.equal(a.mask, h.mask) for a, h in zip(avg.rows, hidden.rows))
    last = llm.config.num_layers
    assert hidden.fusion_layer == last and render_text(hidden).count(f"# hidden_avg (fused from block {last}) row") == 2
    chosen = build_view(llm, "Who wrote Hamlet?", ["Hamlet author?"], method="hidden_avg", fusion_layer=1)
    assert chosen.name == "hidden_avg (fused from block 1)" and avg.name == "avg"


def test_view_rows_are_the_runtime_rows(llm):
    """Without a shared head each logit row is its own full prompt, as `run_method` lays it out."""
    view = build_view(llm, "Who wrote Hamlet?", ["Hamlet author?"], method="max", share_prefix=False, decode_steps=1)
    enc = encode_question(llm, ["Who wrote Hamlet?", "Hamlet author?"])
    layout = stack_rows([plain_row(enc.full(i)) for i in range(2)], llm.pad_id, torch.device("cpu"))
    assert len(view.rows) == 2
    for b, r in enumerate(view.rows):
        assert r.segments[:-1] == layout.segments[b].tolist()
        assert r.positions[:-1] == layout.positions[b].tolist()
        assert r.positions[-1] == int(layout.next_positions[b])


def test_a_repeat_of_the_question_is_drawn_as_generate_runs_it(llm):
    """generate drops a paraphrase that repeats the question up to case and spacing: so does the picture; and
    flex without a shared head draws each segment as head + paraphrase, the suffix once after them."""
    once = build_view(llm, "Capital of France?", ["capital of  France?", "France's capital?"], method="flex")
    assert set(once.rows[0].segments) == {SHARED, 1, 2}
    enc = encode_question(llm, ["Capital of France?", "France's capital?"], "Answer briefly. ", " A:", chat=False)
    view = build_view(llm, "Capital of France?", ["France's capital?"], method="flex", prefix="Answer briefly. ",
                      suffix=" A:", chat=False, share_prefix=False, decode_steps=1)
    assert view.prompt_len == 2 * len(enc.head) + sum(map(len, enc.paraphrases)) + len(enc.tail)


def test_text_snapshot():
    enc = Encoded(head=[10, 11], paraphrases=[[21, 22], [31]], tail=[40])
    view = view_from_encoded(enc, "flex", lambda i: f"t{i}", pad_id=0, positions="right", decode_steps=2)
    legend = render_text(view).splitlines()[0]  # what the characters mean, once, before the rows
    assert legend.startswith("# a row per query token") and "P shared prompt" in legend and ". hidden" in legend
    assert render_text(view).split("\n", 1)[1] == (
        "# flex row 0\n"
        "t10         0 P.......\n"
        "t11         1 PP......\n"
        "t21         2 PP1.....\n"
        "t22         3 PP11....\n"
        "t31         3 PP..2...\n"
        "t40         4 PP112P..\n"
        "<gen>       5 PP112PG.\n"
        "<gen>       6 PP112PGG\n"
    )
    logit = view_from_encoded(enc, "avg", lambda i: f"t{i}", pad_id=0, decode_steps=1)
    assert render_text(logit).split("\n", 1)[1] == (  # row 1 is left-padded after the separately prefilled head
        "# avg row 0\n"
        "t10         0 P.....\n"
        "t11         1 PP....\n"
        "t21         2 PPP...\n"
        "t22         3 PPPP..\n"
        "t40         4 PPPPP.\n"
        "<gen>       5 PPPPPG\n"
        "# avg row 1\n"
        "t10         0 P. ...\n"
        "t11         1 PP ...\n"
        "<pad>       - PP ...\n"
        "t31         2 PP P..\n"
        "t40         3 PP PP.\n"
        "<gen>       4 PP PPG\n"
    )


def test_a_view_past_the_models_context_is_refused_as_generating_would_be(llm):
    """Positions past the context were drawn (and --decode-steps 100000 filled the memory): refused in one line."""
    enc = encode_question(llm, ["Capital?", "France capital?"], "", "\nA:", False)
    fits = build_view(llm, "Capital?", ["France capital?"], prefix="", suffix="\nA:", chat=False, decode_steps=3)
    last = max(max(r.positions) for r in fits.rows) - 3 + 1  # positions the prompts reach; 512 in this checkpoint
    assert view_from_encoded(enc, "flex", str, llm.pad_id, decode_steps=512 - last, context=512).length > 0
    for method in ("flex", "avg"):
        with pytest.raises(MinirunError, match=f"prompt \\+ {513 - last} decode steps reach position 513, beyond "
                                               "the model's context of 512: .* fewer --decode-steps"):
            build_view(llm, "Capital?", ["France capital?"], method=method, suffix="\nA:", chat=False,
                       decode_steps=513 - last)


def test_each_paraphrase_has_its_own_symbol_up_to_59_and_none_reuses_another():
    """Past 35 the text view drew paraphrase 36 as paraphrase 1's symbol: a reader saw two segments as one."""
    from minirun.cli.mask_view import segment_char

    symbols = [segment_char(k) for k in range(1, 60)]
    assert len(set(symbols)) == 59 and symbols[35] == "A" and segment_char(60) == segment_char(100) == "+"
    assert not {segment_char("shared"), segment_char("gen"), ".", " ", "+"} & set(symbols)
