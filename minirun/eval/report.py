"""Summaries of a results table: accuracy with its 95% interval and throughput per method, paired
tests against `origin` and the single-prompt mean, per relation, and how often methods agree.
Plain DataFrames and dicts; rendering them is the CLI's job.

A table with a `model` column (a sweep) is summarised per (model, method), pairing items only
within a model."""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from minirun.errors import MinirunError
from minirun.eval.matching import SCORING_RULES
from minirun.eval.results import SOURCES, journal_paths, read_results
from minirun.eval.stats import (
    brier_score,
    calibration_error,
    holm,
    mcnemar_exact,
    newcombe_paired_interval,
    paired_bootstrap_interval,
    sign_flip_p,
    wilson_interval,
)
from minirun.figures import literal_text, save_figure
from minirun.methods.choice_rules import method_pick, option_probabilities, true_mass
from minirun.methods.names import CHOICE_SCORES, EVERY_ANSWER
from minirun.text import THINK_END, normalize

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

NEEDED = ("id", "method", "answer", "exact", "correct", "tokens", "seconds")
HARNESS_TOKENS = 256  # the new tokens lm-evaluation-harness's generation tasks give an answer (its max_gen_toks)
BOOTSTRAP_SEED = 0
PAIRED = ("diff_vs_origin", "diff_vs_origin_ci95_low", "diff_vs_origin_ci95_high", "p_vs_origin", "p_vs_origin_holm",
          "n_vs_origin",
          "diff_vs_mean_single", "diff_vs_mean_single_ci95_low", "diff_vs_mean_single_ci95_high", "p_vs_mean_single",
          "mean_single_accuracy", "oracle_accuracy", "consistency")


def load_results(output_dir: str | Path) -> pd.DataFrame:
    """A run's table: from its journals when present (they are never behind, even mid-run),
    else from `results.parquet`, keeping the first copy of each (method, id) as the journals do
    (a table made by hand may repeat rows). Either way with `read_results`'s attrs."""
    output_dir = Path(output_dir)
    table = output_dir / "results.parquet"
    if journal_paths(output_dir):
        df = read_results(output_dir)
    elif table.is_file():
        try:
            df = pd.read_parquet(table)
        except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise MinirunError(f"{table} is not a readable Parquet table ({type(e).__name__}): restore it, or "
                               "rerun `minirun eval` into the same directory to rewrite it from the journals") from None
        if missing := [column for column in NEEDED if column not in df.columns]:
            raise MinirunError(f"{table} lacks the column(s) {', '.join(missing)} a run's table holds, and its "
                               "journals (results.rank*.jsonl) are gone: restore them or it")
        df = df.drop_duplicates([*_keys(df), "id"])
        df.attrs = read_results(output_dir).attrs  # no journals, no rows: only what run.json records
    elif not output_dir.exists():
        raise MinirunError(f"{output_dir}: no such directory; pass the output directory of an `eval` or `sweep` run")
    else:
        raise MinirunError(f"{output_dir}: no results found; pass the output directory of a run")
    if not len(df):
        raise MinirunError(f"{output_dir}: the run has no finished rows yet; let `minirun eval` finish a batch first")
    if "relation" in df.columns:  # a blank relation (rows of a file that gave "") is none, as items read it now
        df.loc[df["relation"].map(lambda r: isinstance(r, str) and not r.strip()), "relation"] = None
    return df


def select_match(df: pd.DataFrame, match: str | None) -> pd.DataFrame:
    """The table scored under `match` (its `correct_<match>` column as `correct`: a run's rule, or "harness",
    lm-evaluation-harness's exact match of triviaqa and nq_open and strict-match of gsm8k, or "flexible", its gsm8k
    flexible-extract, for word problems only); None keeps the run's own rule. Per-prompt
    correctness is recorded under the run's rule only (`attrs["match"]`), so unless `match` is that rule
    per_prompt_accuracy is dropped (the single-prompt figures become NaN) rather than compared across two rules
    (`single_prompt_dropped` tells): equal first verdicts do not make the other prompts' equal, and a table without a
    recorded rule proves nothing. A table of multiple-choice rows only keeps them: an option's verdict is the same
    under every rule."""
    if match is None:
        return df
    if match not in SCORING_RULES:
        raise MinirunError(f"--match must be one of {', '.join(SCORING_RULES)}, not {match!r}")
    column = f"correct_{match}"
    if match == "flexible" and "task" in df.columns and (other := df["task"].isin(("qa", "fill"))).any():
        raise MinirunError(f"--match flexible is lm-evaluation-harness's gsm8k flexible-extract, a verdict of word "
                           f"problems, and {int(other.sum())} rows are short answers: use --match harness for theirs")
    if column not in df.columns or df[column].isna().any():
        raise MinirunError(f"results lack '{column}' (rows written by a minirun before --match {match} existed); "
                           "re-run `minirun eval` into a fresh output directory to add it, or drop --match")
    scored = df.assign(correct=df[column])
    scored_only = "task" in df.columns and df["task"].eq("choice").all()
    if "per_prompt_accuracy" in df.columns and df.attrs.get("match") != match and not scored_only:
        scored = scored.drop(columns="per_prompt_accuracy")
    return scored


RESCORED = ("choice_logprobs", "choice_tokens", "choice_chars", "choices", "gold_choice")


def select_choice_score(df: pd.DataFrame, mode: str | None) -> pd.DataFrame:
    """The table with its multiple-choice rows re-picked under `mode` ("sum": lm-evaluation-harness's acc,
    "chars": its acc_norm, "mean": per token) from the options' stored log-likelihoods, token counts and
    lengths, a vote counted again from each prompt's pick under `mode`; generated rows are left as they are.
    None keeps the run's own picks. Single-prompt figures `select_match` dropped stay dropped: re-made for
    choice rows only they would cover part of the table."""
    if mode is None:
        return df
    if mode not in CHOICE_SCORES:
        raise MinirunError(f"--choice-score must be one of {', '.join(CHOICE_SCORES)}, not {mode!r}")
    scored = df["task"].eq("choice") if "task" in df.columns else pd.Series(False, index=df.index)
    if not scored.any():
        raise MinirunError("--choice-score re-picks multiple-choice answers, and this table has none: drop it")
    rows = df[scored]
    if any(c not in df.columns or rows[c].isna().any() for c in RESCORED):
        raise MinirunError("results lack the options' log-likelihoods (written by an older minirun); re-run "
                           "`minirun eval` into a fresh output directory to add them, or drop --choice-score")
    df = df.copy()
    for i, row in rows.iterrows():
        sizes = list(row["choice_tokens"]), list(row["choice_chars"])
        each = row.get("per_prompt_logprobs")
        each = [list(lp) for lp in each] if isinstance(each, (list, np.ndarray)) else None
        choice, scores, picks = method_pick(row["method"], list(row["choice_logprobs"]), *sizes, mode, each)
        rights = right_options(row)
        right = choice in rights
        options = list(row["choices"])
        df.at[i, "choice"], df.at[i, "choice_scores"] = choice, scores
        df.at[i, "answer"] = df.at[i, "generated"] = options[choice]
        for column in ("exact", "correct", *(f"correct_{rule}" for rule in SCORING_RULES)):
            if column in df.columns:
                df.at[i, column] = right
        if "per_prompt_accuracy" in df.columns and picks is not None:
            df.at[i, "answers"] = [options[c] for c in picks]
            df.at[i, "per_prompt_correct"] = [c in rights for c in picks]
            df.at[i, "per_prompt_accuracy"] = sum(c in rights for c in picks) / len(picks)
    return df


def right_options(row: pd.Series) -> list[int]:
    """A scored row's right options: every one its item has (`true_options`, TruthfulQA's MC2 sets), else the one
    `gold_choice` (rows of runs before sets were recorded have no `true_options`)."""
    listed = row.get("true_options")
    return [int(i) for i in listed] if isinstance(listed, (list, np.ndarray)) else [int(row["gold_choice"])]


def single_prompt_dropped(before: pd.DataFrame, after: pd.DataFrame) -> bool:
    """Whether `select_match` dropped single-prompt figures `before` had (per_prompt's or vote's: a run of neither
    had none to drop)."""
    return "per_prompt_accuracy" in before.columns and bool(before["per_prompt_accuracy"].notna().any()) \
        and "per_prompt_accuracy" not in after.columns


def harness_notes(run_key: dict, rows: pd.DataFrame) -> list[str]:
    """What keeps a run's `--match harness` verdicts from being lm-evaluation-harness's figure of its dataset: prompts
    in minirun's words (a file asked without --benchmark), the chat template, which the harness leaves off unless
    told, and answers that took every one of fewer new tokens than the harness gives (`HARNESS_TOKENS`) before a stop,
    which it would have read on (one answer per row: per_prompt's and vote's rows hold several), and few-shot examples
    drawn once for every question, where the harness draws each its own. Empty for a run of multiple-choice rows
    alone."""
    generated = rows[rows["task"].ne("choice")] if "task" in rows.columns else rows
    if not len(generated):
        return []
    notes = []
    if not (fmt := str(run_key.get("prompt_format", "minirun"))).startswith("harness "):
        notes.append(f"its answers were asked in minirun's words (prompt format {fmt!r}), not lm-evaluation-harness's,"
                     " so their harness verdicts are not its figure of the dataset: ask "
                     "triviaqa, nq_open or gsm8k by name, or a copy of their rows with --benchmark NAME")
    if fmt.startswith("harness ") and run_key.get("few_shot_k") and run_key.get("few_shot_draw") == "shared":
        notes.append(f"its questions were all asked under one draw of {run_key['few_shot_k']} few-shot examples, where "
                     "lm-evaluation-harness draws each question its own: --few-shot-draw per-question for its figure")
    if run_key.get("chat"):
        notes.append("its answers were asked inside the model's chat template, which lm-evaluation-harness leaves off "
                     "unless told: --no-chat for its figure")
    budget = run_key.get("max_new_tokens")
    alone = generated[~generated["method"].isin(EVERY_ANSWER)]
    if budget is not None and budget < HARNESS_TOKENS and len(alone):
        counts = (alone["tokens"] >= budget).groupby(alone["method"]).agg(["sum", "count"])
        notes += [f"{method}: {int(n)} of {int(total)} answers took all {budget} new tokens before a stop, where "
                  f"lm-evaluation-harness reads on to its stops (up to {HARNESS_TOKENS} tokens) and may judge them "
                  f"otherwise: --max-new-tokens {HARNESS_TOKENS}" for method, (n, total) in counts.iterrows() if n]
    return notes


def unfinished_notes(df: pd.DataFrame, who: str = "", of: str = "") -> list[str]:
    """A warning per method short of its items (`unfinished`): `who` before its name (a model of runs compared side
    by side), `of` after the items (their dataset)."""
    return [f"{who}{method} has scored {answered} of the {total} items{of} (an unfinished run): its figures cover "
            "those items only" if answered else f"{who}{method} was asked for but has scored none of the {total} "
            f"items{of} (an unfinished run): it has no figures yet" for method, answered, total in unfinished(df)]


def unfinished(df: pd.DataFrame) -> list[tuple[str, int, int]]:
    """(method, items it scored, items it should have) for each method of a run short of the items
    its run.json lists (`attrs["items"]`) or that any method scored, as an interrupted run leaves them,
    a method with rows but no verdict, or asked (`attrs["methods"]`) but stopped before its first row, included
    (it scored 0); a sweep's methods are counted within their model."""
    out = []
    for model, part in (df.groupby("model", sort=True) if "model" in df.columns else [(None, df)]):
        total = max(part["id"].nunique(), df.attrs.get("items", 0) if model is None else 0)
        scored = part[part["correct"].notna()].groupby("method")["id"].nunique()
        asked = set(part["method"]) | (set(df.attrs.get("methods", ())) if model is None else set())
        for method, answered in scored.reindex(sorted(asked), fill_value=0).items():
            if answered < total:
                out.append((method if model is None else f"{model} · {method}", int(answered), int(total)))
    return out


def _check(df: pd.DataFrame) -> None:
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise MinirunError(f"results table lacks column(s) {', '.join(missing)}; pass a table written by ResultStore")
    for column in ("correct", "exact"):  # averaged as numbers: "yes" would fail deep in pandas
        wrong = df[column].notna() & ~df[column].isin([True, False])
        if wrong.any():
            bad = df[wrong].iloc[0]
            raise MinirunError(f"results: {bad['method']}'s row {bad['id']} has {column} {bad[column]!r}, not true, "
                               "false or null; fix or delete that row")


def timed_on(df: pd.DataFrame) -> list[str]:
    """The machines a table's timed rows ran on (rows of runs before rows named theirs: none)."""
    if "machine" not in df.columns:
        return []
    return sorted(df.loc[df["seconds"].notna(), "machine"].dropna().unique())


def cut_thinking(df: pd.DataFrame) -> list[str]:
    """Per method of a reasoning run (`attrs["thinking_budget"]`), a warning where generated rows spent every new
    token thinking (no </think> within max_new_tokens): they have no answer and score as wrong, which reads as the
    method's error unless said."""
    budget = df.attrs.get("thinking_budget")
    if budget is None or not len(df):
        return []
    rows = df[df["task"].ne("choice")] if "task" in df.columns else df
    # a list, not `.map`: on no rows (a run of scored choices alone) pandas' map gives text, which & refuses
    unended = pd.Series([THINK_END not in str(text) for text in rows["generated"].fillna("")], index=rows.index,
                        dtype=bool)
    cut = unended & (rows["tokens"] >= budget)
    return [f"{method}: {int(n)} of {int(total)} answers are none, as their thinking did not end within "
            f"max_new_tokens {budget}: a reasoning run needs hundreds of tokens or more (a new output directory)"
            for method, (n, total) in cut.groupby(rows["method"]).agg(["sum", "count"]).iterrows() if n]


def mixed_timing(df: pd.DataFrame) -> str | None:
    """A warning where a table's timed rows ran on more than one machine (a run resumed elsewhere, a sweep's models
    on two GPUs): its tokens/s and items/s then compare machines as well as methods."""
    found = timed_on(df)
    if len(found) < 2:
        return None
    return (f"tokens/s and items/s mix rows timed on {len(found)} machines ({'; '.join(found)}): compare throughput "
            "only between rows of one machine (`machine` in --json and --csv)")


def _keys(df: pd.DataFrame) -> list[str]:
    return ["model", "method"] if "model" in df.columns else ["method"]


def by_label(rows: pd.DataFrame) -> pd.DataFrame:
    """A sweep's rows keyed by entry, as its tables show them: `method` its label (two entries of one method stay
    apart), `name` the method it ran, which the figures' rules ask for (vote's shares are no likelihoods; per_prompt
    or vote holds each prompt's answer) whatever the entry is called."""
    return rows.assign(name=rows["method"], method=rows["label"])


def _names(df: pd.DataFrame) -> dict[str, str]:
    """Each entry of a table (`method`) with the method it ran: itself, or its name under `by_label`."""
    return dict(zip(df["method"], df["name"] if "name" in df.columns else df["method"]))


def _every_answer(entries: list[str], names: dict[str, str]) -> str | None:
    """The entry whose rows hold every prompt's answer: per_prompt (the one under its own name where a sweep has
    several), else vote; None where neither ran."""
    return next((entry for kind in EVERY_ANSWER for entry in sorted(entries, key=lambda e: e != kind)
                 if names.get(entry) == kind), None)


def _scores(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    # choice rows generate no token: their seconds would slow tokens/s down on a mixed table
    generating = df["seconds"].where(df["task"].ne("choice"), 0.0) if "task" in df.columns else df["seconds"]
    timed = df["tokens"].where(df["seconds"].notna())  # an untimed row's tokens would raise the rate
    clocked = df["seconds"].notna()  # the rows whose seconds count: an untimed row's item would raise items/s
    out = df.assign(generating=generating, timed=timed, clocked=clocked).groupby(keys, sort=True).agg(
        accuracy=("correct", "mean"),
        hits=("correct", "sum"),
        exact_accuracy=("exact", "mean"),
        n=("correct", "count"),
        tokens=("tokens", "sum"),
        seconds=("seconds", "sum"),
        generating=("generating", "sum"),
        timed=("timed", "sum"),
        clocked=("clocked", "sum"),
    )
    if "machine" in df.columns:  # where the seconds were timed (rows of runs before it record none)
        out["machine"] = df.groupby(keys, sort=True)["machine"].agg(lambda m: " | ".join(sorted(m.dropna().unique()))
                                                                    or None)
    ci = [wilson_interval(int(hits), int(n)) for hits, n in zip(out.pop("hits"), out["n"])]
    out.insert(1, "ci95_low", [low for low, _ in ci])
    out.insert(2, "ci95_high", [high for _, high in ci])
    # NaN where nothing was generated (choice scoring) or timed: 0 tokens/s would read as a slow method
    generating, timed, clocked = out.pop("generating"), out.pop("timed"), out.pop("clocked")
    out["tokens_per_second"] = timed.where(timed > 0) / generating.where(generating > 0)
    # every timed row, scored choice items included: the rate a multiple-choice sweep's methods compare by
    out["items_per_second"] = clocked.where(clocked > 0) / out["seconds"].where(out["seconds"] > 0)
    return out


def _no_scores(keys: list[str], columns: tuple[str, ...]) -> pd.DataFrame:
    """A scores frame with no row, indexed by `keys` as a filled one is: what a join adds where nothing applies."""
    index = pd.MultiIndex.from_tuples([], names=keys) if len(keys) > 1 else pd.Index([], name=keys[0])
    return pd.DataFrame(columns=list(columns), index=index, dtype=float)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per method (per (model, method) for a sweep) with what a paper's table needs.

    accuracy (the run's match rule, see `select_match`) with ci95_low/ci95_high, its Wilson score
    interval; exact_accuracy, n, tokens, seconds, tokens_per_second (total tokens over the seconds
    of generated rows, so long generations weigh in and scored multiple-choice rows do not), items_per_second
    (timed rows over their seconds, scored ones included); the calibration of `calibration`; `macro_accuracy` over
    relations where rows carry them; `mc2` where items list their right options; the paired comparisons of
    `paired_stats`, NaN where they do not apply."""
    _check(df)
    df = df.astype({"correct": float, "exact": float})
    df["exact"] = df["exact"].where(df["correct"].notna())  # over the rows n counts, not those without a verdict
    scores = _scores(df, _keys(df)).join(calibration(df)).join(macro_accuracy(df)).join(mc2(df))
    if "model" in df.columns:
        paired = pd.concat({model: paired_stats(part) for model, part in df.groupby("model", sort=True)},
                           names=["model", "method"])
    else:
        paired = paired_stats(df)
    return scores.join(paired)


CALIBRATION = ("confidence", "ece", "brier")


def calibration(df: pd.DataFrame) -> pd.DataFrame:
    """Per method (per (model, method) for a sweep), over its scored multiple-choice rows: confidence (the mean
    probability of the option picked), ece (expected calibration error, 15 equal-width bins) and brier (multi-class
    Brier score), the options' probabilities being `option_probabilities` of the row's scores (re-picked ones after
    `select_choice_score`). Accuracy above confidence means an unsure method, below it an overconfident one.
    Brier scores the rows whose item has one right option (it compares the probabilities with that one); NaN for a
    method with no such rows (generated answers carry no probability over a set of answers)."""
    keys = _keys(df)
    empty = _no_scores(keys, CALIBRATION)
    if any(c not in df.columns for c in ("task", "choice_scores", "gold_choice", "choice")):
        return empty
    rows = df[df["task"].eq("choice") & df["correct"].notna() & df["choice_scores"].notna() & df["gold_choice"].notna()]
    if rows.empty:
        return empty
    out, names = {}, _names(rows)
    for key, part in rows.groupby(keys, sort=True):
        probabilities = [option_probabilities(names[m], list(s))
                         for m, s in zip(part["method"], part["choice_scores"])]
        picked = [p[int(c)] for p, c in zip(probabilities, part["choice"])]
        one = [(p, rights[0]) for p, (_, row) in zip(probabilities, part.iterrows())
               if len(rights := right_options(row)) == 1]
        out[key[0] if len(keys) == 1 else key] = {
            "confidence": float(np.mean(picked)), "ece": calibration_error(picked, part["correct"].astype(bool)),
            "brier": brier_score(*map(list, zip(*one))) if one else math.nan}
    result = pd.DataFrame.from_dict(out, orient="index").reindex(columns=list(CALIBRATION))
    result.index.names = keys
    return result


MC2 = ("mc2", "mc2_ci95_low", "mc2_ci95_high", "diff_mc2_vs_origin", "diff_mc2_vs_origin_ci95_low",
       "diff_mc2_vs_origin_ci95_high", "p_mc2_vs_origin", "p_mc2_vs_origin_holm", "mean_single_mc2")


def right_option_sets(df: pd.DataFrame) -> bool:
    """Whether some scored row's item lists its right options as a set (TruthfulQA's MC2 items, even of one right
    option; a plain item's `answer` given as a list), which `mc2` scores."""
    return "true_options" in df.columns and bool(df["true_options"].map(lambda t: isinstance(t, (list, np.ndarray)))
                                                 .any())


def mc2(df: pd.DataFrame) -> pd.DataFrame:
    """Per method (per model and method for a sweep), over all its scored multiple-choice rows where some item lists
    its right options as a set (`right_option_sets`): `mc2`, the mean probability the method's options'
    log-likelihoods put on an item's right options, one or several (`true_mass`: TruthfulQA's MC2,
    lm-evaluation-harness's truthfulqa_mc2 figure), with a
    percentile bootstrap interval over items; against origin (not per_prompt, no ensemble), `diff_mc2_vs_origin`, the
    mean per-item difference on the items both scored, with a paired bootstrap interval and a sign-flip p (seed
    `BOOTSTRAP_SEED`; Holm-adjusted over the model's methods in `p_mc2_vs_origin_holm`); and on per_prompt's row (or
    else vote's) `mean_single_mc2`, each prompt's MC2 averaged. vote, which picks by the prompts' picks and has no
    likelihoods of its own, has no `mc2`. Empty where no item lists its right options."""
    keys = _keys(df)
    empty = _no_scores(keys, MC2)
    if not right_option_sets(df):
        return empty
    rows = df[df["task"].eq("choice") & df["choice_logprobs"].notna()]
    # vote has no likelihoods of its own (its rows' are the prompts' mean): no MC2, only each prompt's below
    names = _names(rows)
    rows = rows.assign(mc2=[math.nan if names[r["method"]] == "vote" else
                            true_mass(list(r["choice_logprobs"]), right_options(r)) for _, r in rows.iterrows()])
    out = {}
    for model, part in rows.groupby("model", sort=True) if "model" in rows.columns else [(None, rows)]:
        values = part.pivot(index="id", columns="method", values="mc2")
        source = _every_answer(list(values.columns), names)
        for method in values.columns:
            mine = values[method].dropna()
            low, high = paired_bootstrap_interval(mine.to_numpy(), seed=BOOTSTRAP_SEED)
            entry = {"mc2": float(mine.mean()), "mc2_ci95_low": low, "mc2_ci95_high": high}
            if method not in ("origin", "per_prompt") and "origin" in values.columns \
                    and (diffs := (mine - values["origin"]).dropna().to_numpy()).size:
                low, high = paired_bootstrap_interval(diffs, seed=BOOTSTRAP_SEED)
                entry |= {"diff_mc2_vs_origin": float(diffs.mean()), "diff_mc2_vs_origin_ci95_low": low,
                          "diff_mc2_vs_origin_ci95_high": high, "p_mc2_vs_origin": sign_flip_p(diffs, BOOTSTRAP_SEED)}
            if method == source:
                each = part[part["method"] == method]
                entry["mean_single_mc2"] = float(np.mean([
                    np.mean([true_mass(list(lp), right_options(r)) for lp in r["per_prompt_logprobs"]])
                    for _, r in each.iterrows() if isinstance(r.get("per_prompt_logprobs"), (list, np.ndarray))]
                    or [math.nan]))
            out[method if model is None else (model, method)] = entry
    if not out:  # rows of a minirun before the options' log-likelihoods were recorded
        return empty
    frame = pd.DataFrame.from_dict(out, orient="index").reindex(columns=list(MC2)).astype(float)
    frame.index.names = keys
    groups = frame.groupby(level="model", sort=False) if len(keys) > 1 else [(None, frame)]
    frame["p_mc2_vs_origin_holm"] = pd.concat([pd.Series(holm(part["p_mc2_vs_origin"].tolist()), index=part.index)
                                               for _, part in groups])
    return frame


def paired_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Per method of one model's rows, each compared on the items it shares with the other side:

    - vs `origin`: diff_vs_origin (accuracy difference) on the n_vs_origin items both answered,
      diff_vs_origin_ci95_low/high (Newcombe's paired score interval, method 10), p_vs_origin (exact
      McNemar) and p_vs_origin_holm (Holm-adjusted over this model's methods, the family a table
      of "method vs origin" rows tests); NaN for origin itself and for per_prompt, which is no
      ensemble: its `correct` is its first prompt's, with the question first origin's own prompt,
      and testing it would only widen the family every real method is adjusted in.
    - vs the single-prompt mean, when per_prompt (or else vote, whose rows hold the same answers of every prompt)
      ran: diff_vs_mean_single, the mean over items of
      correct(method) - per_prompt_accuracy(item); its interval from a paired bootstrap over items
      (seed `BOOTSTRAP_SEED`, 10,000 resamples, percentile) and p_vs_mean_single from a sign-flip
      permutation test of that mean (same seed), as those differences are not binary.
    - on that per_prompt (or vote) row only: mean_single_accuracy (mean per_prompt_accuracy), oracle_accuracy
      (some prompt right) and consistency (all prompts' answers equal after `normalize`).
    """
    correct = df.pivot(index="id", columns="method", values="correct").astype(float)
    source = _every_answer(list(correct.columns), _names(df))
    prompts = df[df["method"] == source].set_index("id")
    single = prompts.get("per_prompt_accuracy", pd.Series(dtype=float)).astype(float).dropna()
    rows = {}
    for method in correct.columns:
        row = _versus_origin(correct, method)
        if len(single):
            row |= _versus_single(correct[method], single)
        if method == source and len(single):
            row |= {"mean_single_accuracy": float(single.mean()), "oracle_accuracy": float((single > 0).mean()),
                    "consistency": _consistency(prompts)}
        rows[method] = row
    out = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(PAIRED)).astype(float)
    out["p_vs_origin_holm"] = holm(out["p_vs_origin"].tolist())
    out.index.name = "method"
    return out


def paired_difference(ours: pd.Series, theirs: pd.Series, name: str) -> dict[str, float]:
    """Two sides' verdicts (by item id) compared on the items both answered: diff_vs_<name> (accuracy
    difference, ours minus theirs), its Newcombe interval, the exact McNemar p and n_vs_<name>; {} when
    they share no item."""
    pairs = pd.concat([ours.rename("ours"), theirs.rename("theirs")], axis=1).dropna().astype(bool)
    if not len(pairs):
        return {}
    a, b = pairs["ours"], pairs["theirs"]
    both, only_ours = int((a & b).sum()), int((a & ~b).sum())
    only_theirs, neither = int((~a & b).sum()), int((~a & ~b).sum())
    low, high = newcombe_paired_interval(both, only_ours, only_theirs, neither)
    return {f"diff_vs_{name}": (only_ours - only_theirs) / len(pairs), f"diff_vs_{name}_ci95_low": low,
            f"diff_vs_{name}_ci95_high": high, f"p_vs_{name}": mcnemar_exact(only_ours, only_theirs),
            f"n_vs_{name}": len(pairs)}


def _versus_origin(correct: pd.DataFrame, method: str) -> dict[str, float]:
    if method in ("origin", "per_prompt") or "origin" not in correct.columns:
        return {}
    return paired_difference(correct[method], correct["origin"], "origin")


def _versus_single(correct: pd.Series, single: pd.Series) -> dict[str, float]:
    diffs = (correct - single).dropna().to_numpy()
    if not diffs.size:
        return {}
    low, high = paired_bootstrap_interval(diffs, seed=BOOTSTRAP_SEED)
    return {"diff_vs_mean_single": float(diffs.mean()), "diff_vs_mean_single_ci95_low": low,
            "diff_vs_mean_single_ci95_high": high, "p_vs_mean_single": sign_flip_p(diffs, seed=BOOTSTRAP_SEED)}


def _consistency(prompts: pd.DataFrame) -> float:
    """Fraction of items whose prompts' extracted answers are all equal after `normalize`; an
    empty or missing answer agrees with nothing, so prompts that all failed are not consistent."""
    if "answers" not in prompts.columns:
        return np.nan
    answers = [a for a in prompts["answers"] if a is not None and not (isinstance(a, float) and math.isnan(a))]
    same = [len(found) == 1 and None not in found for found in ({_answer(x) for x in a} for a in answers)]
    return float(np.mean(same)) if same else np.nan


def _answer(text: object) -> str | None:
    """An extracted answer as methods are compared on it: `normalize`d, None where empty or missing."""
    return (normalize(text) or None) if isinstance(text, str) else None


def unrelated_note(df: pd.DataFrame, of: str = "") -> str | None:
    """A warning where some items carry a relation and others none (`of`: their dataset, in a sweep's): the
    per-relation tables and macro accuracy leave the latter out, which their figures do not show."""
    return _partly_note(df, "relation", of, "the per-relation tables and the macro accuracy leave them out")


def unrated_note(df: pd.DataFrame, of: str = "", dataset: str | None = None) -> str | None:
    """A warning where some items carry a popularity and others none (`by_popularity` leaves the latter out), or where
    a run of PopQA (`dataset`) has none at all."""
    why = ("rows or a paraphrase file's lines made before minirun recorded PopQA's s_pop hold none: run those items, "
           "or rewrite them, into a new directory or file for them")
    if dataset == "popqa" and ("popularity" not in df.columns or df["popularity"].isna().all()):
        return f"none of the {df['id'].nunique()} PopQA items{of} carry a popularity, so no popularity bins: {why}"
    return _partly_note(df, "popularity", of, f"the popularity bins leave them out ({why})")


def first_prompt_note(df: pd.DataFrame, of: str = "") -> str | None:
    """A warning where origin and per_prompt's (else vote's) first prompt, the very same prompt, answer some items
    differently (`of`: their dataset, in a sweep's), counted per model (a sweep's, or runs side by side) and against
    the first such entry (a sweep may run per_prompt twice, under two labels): bfloat16 rounds a row by the batch it
    runs in (origin runs one row a question, the ensembles one a prompt), so accuracy differences from origin within
    about that many items may be rounding, not the method; in float32 on a CPU they answer alike."""
    if "answers" not in df.columns:
        return None
    entry = "label" if "label" in df.columns else "method"
    counts, named = [], None
    for model, part in (df.groupby("model", sort=False) if "model" in df.columns else [(None, df)]):
        twins = next((part[part["method"] == m] for m in EVERY_ANSWER if (part["method"] == m).any()), None)
        origin = part[part[entry] == "origin"]  # the baseline entry: a sweep's other origin entries have other labels
        if twins is None or origin.empty:
            continue
        twins = twins[twins[entry] == twins[entry].iloc[0]].drop_duplicates("id")
        named = named or str(twins["method"].iloc[0])
        theirs = dict(zip(twins["id"], zip(twins["prompts"], twins["answers"])))  # one lookup an item, not three
        asked = differ = 0
        for item, prompts, answer in zip(origin["id"], origin["prompts"], origin["answer"]):
            their_prompts, answers = theirs.get(item, (None, None))
            if not isinstance(answers, (list, np.ndarray)):
                continue  # not asked by the ensemble, or a row of a minirun before it kept each prompt's answer
            if list(prompts)[:1] != list(their_prompts)[:1]:
                continue  # --no-original: origin asks the question, the ensembles the paraphrases
            asked += 1
            differ += answer != answers[0]
        if differ:
            counts.append(f"{differ} of {asked}" + ("" if model is None else f" for {model}"))
    if not counts:
        return None
    return (f"origin and {named}'s first prompt, the same prompt, answer some items{of} differently "
            f"({'; '.join(counts)}): bfloat16 rounds a row by the batch it runs in (origin runs one row a question, "
            "the ensembles one a prompt), so accuracy differences from origin within about that many items may be "
            "rounding, not the method; in float32 on a CPU they answer alike (a difference there is a defect)")


def _partly_note(df: pd.DataFrame, column: str, of: str, effect: str) -> str | None:
    if column not in df.columns or df[column].isna().all():
        return None
    known = set(df.loc[df[column].notna(), "id"])
    if not (missing := df.loc[~df["id"].isin(known), "id"].nunique()):
        return None
    return f"{missing} of the {df['id'].nunique()} items{of} carry no {column}: {effect}"


def by_relation(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (with Wilson interval) and throughput per (method, relation), for fill-in datasets
    whose rows carry a relation; per (model, method, relation) for a sweep."""
    _check(df)
    if "relation" not in df.columns or df["relation"].isna().all():
        raise MinirunError("results have no 'relation' column; per-relation scores need a fill-in dataset")
    rows = df[df["relation"].notna()].astype({"correct": float, "exact": float})
    return _scores(rows, [*_keys(rows), "relation"])


POPULARITY_BINS = 4  # quartiles of the items' popularity
VERSUS_ORIGIN = ("diff_vs_origin", "diff_vs_origin_ci95_low", "diff_vs_origin_ci95_high", "p_vs_origin",
                 "p_vs_origin_holm", "n_vs_origin")  # `paired_difference` against origin, Holm-adjusted


def by_popularity(df: pd.DataFrame, bins: int = POPULARITY_BINS) -> pd.DataFrame:
    """Accuracy (Wilson interval) per method (per model and method for a sweep) and bin of the items' subject
    popularity (PopQA's `s_pop`, or a plain item's `popularity`): `bins` quantiles of the items' popularity, about as
    many items each (fewer bins where ties merge them), labelled "1: low–high" upwards; against origin, the difference
    on the bin's items (Newcombe interval, exact McNemar p, Holm over every method and bin of a model): where along the
    long tail an ensemble gains, the question PopQA was made to ask. Rows without a popularity are left out."""
    if "popularity" not in df.columns or df["popularity"].isna().all():
        raise MinirunError("results have no 'popularity' column; popularity bins need PopQA's items (their s_pop) or "
                           "items that give a popularity")
    # any row's (a resumed run's older rows, or another model's, hold none), so that every model shares the bins
    per_item = df[df["popularity"].notna()].groupby("id")["popularity"].first().astype(float)
    rows = df[df["id"].isin(per_item.index)].astype({"correct": float, "exact": float})
    codes, edges = pd.qcut(per_item, bins, labels=False, retbins=True, duplicates="drop")
    if len(edges) < 2:  # every item equally popular: one bin
        codes, edges = pd.Series(0, index=per_item.index), [per_item.min(), per_item.max()]
    names = {code: f"{n}: {_amount(edges[code])}–{_amount(edges[code + 1])}"
             for n, code in enumerate(sorted(set(codes.astype(int))), 1)}
    rows = rows.assign(popularity=rows["id"].map(codes).map(names))
    keys = [*_keys(rows), "popularity"]
    versus = {}
    for group, part in rows.groupby([k for k in keys if k != "method"], sort=True):
        *model, name = group
        correct = part.pivot(index="id", columns="method", values="correct").astype(float)
        for method in correct.columns:
            versus[(*model, method, name)] = _versus_origin(correct, method)
    paired = pd.DataFrame.from_dict(versus, orient="index").reindex(columns=list(VERSUS_ORIGIN)).astype(float)
    paired.index = pd.MultiIndex.from_tuples(list(versus), names=keys)
    for _, part in (paired.groupby(level="model") if "model" in keys else [(None, paired)]):
        paired.loc[part.index, "p_vs_origin_holm"] = holm(part["p_vs_origin"].tolist())
    return _scores(rows, keys).join(paired)


def _amount(value: float) -> str:
    """A bin edge as a label shows it: whole page views with thousands marked, a small fraction to 3 figures."""
    return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.3g}"


MACRO = ("macro_accuracy", "relations", "diff_macro_vs_origin", "diff_macro_vs_origin_ci95_low",
         "diff_macro_vs_origin_ci95_high", "p_macro_vs_origin")


def macro_accuracy(df: pd.DataFrame) -> pd.DataFrame:
    """Per method (per model and method for a sweep): `macro_accuracy`, the mean of its per-relation accuracies, the
    figure LAMA-style probes report (each relation weighs alike, however many facts it has), and `relations`, how
    many it averages; against origin (not for per_prompt, no ensemble), `diff_macro_vs_origin`: the mean over
    relations of the accuracy difference on the relation's items both answered, with a paired bootstrap interval
    over relations and a sign-flip p (seed `BOOTSTRAP_SEED`; relations are the units a macro figure generalises
    over). No row where no row of a method has a relation (a join gives NaN)."""
    if "relation" not in df.columns or df["relation"].isna().all():
        return _no_scores(_keys(df), MACRO)
    rows = df[df["relation"].notna()].astype({"correct": float})
    parts = rows.groupby("model", sort=True) if "model" in rows.columns else [(None, rows)]
    out = {}
    for model, part in parts:
        correct = part.pivot_table(index=["relation", "id"], columns="method", values="correct", aggfunc="first")
        accuracy = correct.groupby(level="relation").mean()
        for method in correct.columns:
            key = method if model is None else (model, method)
            mine = accuracy[method].dropna()
            out[key] = {"macro_accuracy": float(mine.mean()), "relations": len(mine)}
            if method in ("origin", "per_prompt") or "origin" not in correct.columns:
                continue
            both = correct[[method, "origin"]].dropna()
            diffs = (both[method] - both["origin"]).groupby(level="relation").mean().to_numpy()
            if not diffs.size:  # no item both answered (a run still going)
                continue
            low, high = paired_bootstrap_interval(diffs, seed=BOOTSTRAP_SEED)
            out[key] |= {"diff_macro_vs_origin": float(diffs.mean()), "diff_macro_vs_origin_ci95_low": low,
                         "diff_macro_vs_origin_ci95_high": high,
                         "p_macro_vs_origin": sign_flip_p(diffs, seed=BOOTSTRAP_SEED)}
    frame = pd.DataFrame.from_dict(out, orient="index").reindex(columns=list(MACRO)).astype(float)
    frame.index.names = _keys(df)
    return frame


def method_order(methods: Iterable[str]) -> list[str]:
    """Methods as every table and figure lists them: origin, the baseline the others are compared with, first, then
    the rest by name."""
    return sorted(set(methods), key=lambda m: (m != "origin", m))


def in_method_order(scores: pd.DataFrame) -> pd.DataFrame:
    """Rows indexed by method (alone, or a level beside a model's, a relation's or a bin's) with the methods in
    `method_order`, the other levels' order kept."""
    rank = {m: n for n, m in enumerate(method_order(scores.index.get_level_values("method")))}
    names = scores.index.names

    def key(n: int) -> tuple:
        index = scores.index[n] if len(names) > 1 else (scores.index[n],)
        return tuple(rank[v] if name == "method" else order[name][v] for name, v in zip(names, index))

    order = {name: {v: n for n, v in enumerate(dict.fromkeys(scores.index.get_level_values(name)))}
             for name in names if name != "method"}  # as the table had them: a popularity bin's order is no name's
    return scores.iloc[sorted(range(len(scores)), key=key)]


def agreement(df: pd.DataFrame) -> pd.DataFrame:
    """Method x method: the fraction of shared items whose extracted answers are equal after
    `normalize` (items of a sweep count once per model). High agreement with low accuracy means
    methods fail the same way."""
    _check(df)
    index = [*_keys(df)[:-1], "id"]
    # an empty or missing answer (a failed row) agrees with nothing, not even another one; an item a method has no
    # row for yet is not shared
    answers = df.assign(answer=df["answer"].map(_answer)).pivot(index=index, columns="method", values="answer")
    answered = df.assign(row=True).pivot(index=index, columns="method", values="row").notna()
    methods = method_order(answers.columns)
    return pd.DataFrame([[_agree(answers[a], answers[b], answered[a] & answered[b]) for b in methods]
                         for a in methods], index=methods, columns=methods)


PAIRWISE = ("diff", "ci95_low", "ci95_high", "p", "p_holm", "n")


def pairwise(df: pd.DataFrame) -> pd.DataFrame:
    """Every two methods of one run compared on the items both answered, as each is with origin: a row per ordered
    pair (method, versus) with `diff` (method's accuracy minus versus's), its Newcombe interval, the exact McNemar
    `p`, `p_holm` (Holm over the run's unordered pairs: the family a "which fusion is best" table tests) and `n`.
    per_prompt, no ensemble (its verdict is its first prompt's), is left out, as from the tests against origin."""
    _check(df)
    correct = df.pivot(index="id", columns="method", values="correct").astype(float)
    methods = method_order(m for m in correct.columns if m != "per_prompt")
    pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]
    found = {pair: paired_difference(correct[pair[0]], correct[pair[1]], "versus") for pair in pairs}
    adjusted = dict(zip(pairs, holm([found[pair].get("p_vs_versus", math.nan) for pair in pairs])))
    rows = {}
    for (a, b), stats in found.items():
        if not stats:
            continue
        diff, low, high = stats["diff_vs_versus"], stats["diff_vs_versus_ci95_low"], stats["diff_vs_versus_ci95_high"]
        shared = {"p": stats["p_vs_versus"], "p_holm": adjusted[(a, b)], "n": stats["n_vs_versus"]}
        rows[(a, b)] = {"diff": diff, "ci95_low": low, "ci95_high": high, **shared}
        rows[(b, a)] = {"diff": 0.0 - diff, "ci95_low": 0.0 - high, "ci95_high": 0.0 - low, **shared}
    index = pd.MultiIndex.from_tuples(list(rows), names=["method", "versus"]) if rows else \
        pd.MultiIndex.from_arrays([[], []], names=["method", "versus"])
    return pd.DataFrame(list(rows.values()), index=index, columns=list(PAIRWISE), dtype=float).sort_index()


def _agree(x: pd.Series, y: pd.Series, shared: pd.Series) -> float:
    return float((x.notna() & (x == y))[shared].mean()) if shared.any() else math.nan


def report_json(df: pd.DataFrame) -> dict:
    """`summarize` as a JSON-ready dict: {method: scores}, or {model: {method: scores}} for a
    sweep. Each X_low/X_high pair becomes one X: [low, high] (ci95, diff_vs_origin_ci95,
    diff_vs_mean_single_ci95); numpy values become Python ones, NaN None. Where rows carry relations, each
    method's scores hold `by_relation`: {relation: that relation's scores}, as a per-relation table needs them, and
    where they carry a popularity `by_popularity`: {bin: its scores};
    and in one run's, each method's `versus`: {other method: `pairwise`'s diff, ci95, p, p_holm and n}."""
    out: dict = {}
    versus: dict[str, dict] = {}
    if "model" not in df.columns:
        for (method, other), stats in pairwise(df).to_dict("index").items():
            versus.setdefault(method, {})[other] = json_scores(stats)
    nested: dict[str, dict[tuple, dict]] = {}  # by_relation/by_popularity -> (model, method) or (method,) -> {}
    for name, split, column in (("by_relation", by_relation, "relation"), ("by_popularity", by_popularity,
                                                                         "popularity")):
        if column in df.columns and df[column].notna().any():
            for (*key, part), scores in split(df).to_dict("index").items():
                nested.setdefault(name, {}).setdefault(tuple(key), {})[str(part)] = json_scores(scores)
    for key, scores in summarize(df).to_dict("index").items():
        entry = json_scores(scores)
        for name, parts in nested.items():
            if (found := parts.get(key if isinstance(key, tuple) else (key,))) is not None:
                entry[name] = found
        if key in versus:
            entry["versus"] = versus[key]
        if isinstance(key, tuple):
            out.setdefault(str(key[0]), {})[key[1]] = entry
        else:
            out[key] = entry
    return out


def json_scores(scores: dict) -> dict:
    """One method's scores JSON-ready: each X_low/X_high pair as X: [low, high], NaN as None."""
    out = {}
    for name, value in scores.items():
        if name.endswith("_low"):
            low, high = _plain(value), _plain(scores[name.removesuffix("_low") + "_high"])
            out[name.removesuffix("_low")] = None if low is None or high is None else [low, high]
        elif not name.endswith("_high"):
            value = _plain(value)
            out[name] = int(value) if is_count(name) and value is not None else value
    return out


def is_count(name: str) -> bool:
    """Whether a scores column counts something (n, tokens, relations, ...): written 3, not 3.0."""
    return name in ("n", "tokens", "relations", "num_prompts") or name.startswith("n_vs_")


def with_counts(scores: pd.DataFrame) -> pd.DataFrame:
    """Scores whose count columns (`is_count`) are whole numbers, blank where none, as a CSV should hold them."""
    return scores.astype({c: "Int64" for c in scores.columns if is_count(str(c))})


def _plain(value: object) -> object:
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def method_label(method: str) -> str:
    """How a table or plot names a method: per_prompt's scores are its first prompt's, and a bare name would
    read as an ensemble's."""
    return f"{method} (first prompt)" if method == "per_prompt" else method


def fewer_shared(row: pd.Series) -> int | None:
    """How many items a row's difference from origin rests on, where fewer than the row's n (origin or the
    method unfinished): the count a reader needs beside that difference; None otherwise."""
    return int(row["n_vs_origin"]) if pd.notna(row["n_vs_origin"]) and row["n_vs_origin"] < row["n"] else None


def provenance(run_key: dict, methods: dict[str, dict], machines: list[str], source: str = "a run",
               sources: dict[str, dict] | None = None, rows: pd.DataFrame | None = None) -> str:
    """LaTeX comment lines naming what made a table's rows: the run's settings as run.json records them (model
    path and weights hash, dtype, device, dataset, prompts, few-shot hash, generation settings, template date, each
    method's own), where the model and the data came from (`sources`, as run.json records them: hub repo and
    commit, or GGUF and its hash; a Hub dataset's repo, revision and commit), the machines its rows were timed
    on, and where the ensembles' `rows` fused fewer prompts than `num_prompts` asks for some item (one with fewer
    distinct wordings), how many, so a table in a paper's sources leads back to its run and says what it fused."""
    lines = [f"% {key}: {json.dumps(value)}" for key, value in sorted(run_key.items())]
    if rows is not None and (fused := fused_prompts(rows)) and fused[0] < run_key.get("num_prompts", 0):
        lines.append(f"% prompts an ensemble fused per item: {'-'.join(map(str, sorted(set(fused))))} (num_prompts "
                     "asks more: some items hold fewer distinct wordings)")
    lines += [f"% {kind.replace('_', ' ')}: {json.dumps(sources[kind], sort_keys=True)}"
              for kind in SOURCES if (sources or {}).get(kind)]
    lines += [f"% method {name}: {json.dumps(settings, sort_keys=True)}" for name, settings in sorted(methods.items())]
    lines += [f"% timed on: {machine}" for machine in machines]
    return "".join(f"{line}\n" for line in [f"% made by minirun report from {source} with", *lines])


def fused_prompts(rows: pd.DataFrame) -> tuple[int, int] | None:
    """The fewest and most prompts the ensembles' rows (every method's but origin's) asked an item; None without
    such rows."""
    if "prompts" not in rows.columns:
        return None
    counts = rows.loc[rows["method"] != "origin", "prompts"].map(len)
    return (int(counts.min()), int(counts.max())) if len(counts) else None


def rescoring(match: str | None, choice_score: str | None, rows: pd.DataFrame | None = None) -> dict[str, str]:
    """The `report --match/--choice-score` options that changed how `rows` (a table's) were scored: --match rescores
    generated answers, --choice-score multiple-choice picks; {} where neither was given or applies (--match naming
    the rule the rows were scored under, `attrs["match"]`, changes nothing). `--json` and `--csv` carry it
    (`rescored`) beside the scores, as the LaTeX table's comment and caption do (`rescored`)."""
    choice = rows["task"].eq("choice") if rows is not None and "task" in rows.columns else None
    own = rows.attrs.get("match") if rows is not None else None
    applies = {"match": (choice is None or not choice.all()) and match != own,
               "choice_score": choice is None or choice.any()}
    return {name: value for name, value in (("match", match), ("choice_score", choice_score))
            if value is not None and applies[name]}


def rescored(match: str | None, choice_score: str | None, rows: pd.DataFrame | None = None) -> tuple[str, str]:
    """What `report --match/--choice-score` changed of how the rows were scored (`rescoring`), for a LaTeX table: a
    comment line after its provenance, and a note for its caption (the run.json settings the provenance prints are
    the run's, not the table's); both empty where it changed nothing."""
    options = rescoring(match, choice_score, rows)
    if not options:
        return "", ""
    flags = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in options.items())
    return f"% rescored by minirun report: {json.dumps(options, sort_keys=True)}\n", f" (rescored: {flags})"


def latex(scores: pd.DataFrame, caption: str) -> str:
    """A booktabs LaTeX table of scores as `summarize` names them, a row per index entry (method, or
    model and method, models in their order in `scores`: a sweep's first is the one the others are
    compared with): accuracy with its Wilson 95% interval, the difference from origin on the items
    both answered with its Holm-adjusted exact McNemar p, and n; the difference from the first model under the same
    method with its exact McNemar p, where models are compared (a sweep's, or runs side by side); the macro accuracy
    over relations where rows carry them (LAMA-style probes); confidence, ECE and Brier where some row has them
    (multiple choice); MC2, its difference from origin's and that difference's Holm-adjusted p where items list
    their right options (TruthfulQA's MC2 sets). The caption says which tests, that per_prompt's row is its first
    prompt's, and the mean single-prompt accuracy (and MC2) where per_prompt's or vote's row carries it."""
    keys = [str(name).capitalize() for name in scores.index.names]
    calibrated = "ece" in scores.columns and bool(scores["ece"].notna().any())
    macro = "macro_accuracy" in scores.columns and bool(scores["macro_accuracy"].notna().any())
    listed = "mc2" in scores.columns and bool(scores[["mc2", "mean_single_mc2"]].notna().any(axis=None))
    relations = int(scores["relations"].max()) if macro else 0
    index = [i if isinstance(i, tuple) else (i,) for i in scores.index]
    models = list(dict.fromkeys(i[:-1] for i in index))
    compared = "diff_vs_first_model" in scores.columns and bool(scores["diff_vs_first_model"].notna().any())
    first = _tex(str(models[0][0])) if compared else ""
    extra = ([rf"$\Delta$ {first}", "$p$"] if compared else []) + (["Macro acc."] if macro else []) \
        + (["Conf.", "ECE", "Brier"] if calibrated else []) + (["MC2", r"$\Delta$ MC2", r"$p$ (MC2)"] if listed else [])
    lines = [r"\begin{table}[t]", r"\centering",
             r"\begin{tabular}{" + "l" * len(keys) + "rcrrr" + "r" * len(extra) + "}", r"\toprule",
             " & ".join([*keys, "Accuracy", r"95\% CI", r"$\Delta$ origin", r"$p$", "$n$", *extra]) + r" \\",
             r"\midrule"]
    # origin first within each model: the baseline the other rows are compared with
    order = sorted(range(len(index)), key=lambda n: (models.index(index[n][:-1]), index[n][-1] != "origin"))
    for n in order:
        labels, row = [_tex(str(x)) for x in (*index[n][:-1], method_label(str(index[n][-1])))], scores.iloc[n]
        fewer = fewer_shared(row)
        versus = ["--", "--"] if pd.isna(row["diff_vs_origin"]) else [
            f"${row['diff_vs_origin']:+.3f}$" + (f" ($n={fewer}$)" if fewer is not None else ""),
            _tex_p(row["p_vs_origin_holm"])]
        interval = "--" if pd.isna(row["ci95_low"]) else f"[{row['ci95_low']:.3f}, {row['ci95_high']:.3f}]"
        columns = (["macro_accuracy"] if macro else []) + (list(CALIBRATION) if calibrated else [])
        mc2_versus = "--" if pd.isna(row["diff_mc2_vs_origin"]) else f"${row['diff_mc2_vs_origin']:+.3f}$"
        shared = row.get("n_vs_first_model", math.nan)
        first_versus = ["--", "--"] if pd.isna(row.get("diff_vs_first_model", math.nan)) else [
            f"${row['diff_vs_first_model']:+.3f}$" + (f" ($n={int(shared)}$)" if shared < row["n"] else ""),
            _tex_p(row["p_vs_first_model"])]
        cells = [_tex_figure(row[c]) + (f" ($r={int(row['relations'])}$)" if c == "macro_accuracy" and
                                        row["relations"] < relations else "") for c in columns]
        extras = (first_versus if compared else []) + cells + (
            [_tex_figure(row["mc2"]), mc2_versus, _tex_p(row["p_mc2_vs_origin_holm"])] if listed else [])
        lines.append(" & ".join([*labels, _tex_figure(row["accuracy"]), interval,
                                 *versus, str(int(row["n"])), *extras]) + r" \\")
    prompts = [n for n in order if index[n][-1] == "per_prompt"]
    single, single_mc2 = ([f"{scores.iloc[n][name]:.3f}" + "".join(f" ({_tex(str(m))})" for m in index[n][:-1])
                           for n in order if pd.notna(scores.iloc[n].get(name, math.nan))]
                          for name in ("mean_single_accuracy", "mean_single_mc2"))
    note = ("" if not prompts else r" per\_prompt (first prompt): its first prompt alone (origin's own prompt when "
                                    r"the question comes first), so not compared with origin.") \
        + (" Each prompt alone: mean single-prompt " + "; ".join(
            f"{name} {', '.join(figures)}" for name, figures in (("accuracy", single), ("MC2", single_mc2)) if figures)
           + "." if single or single_mc2 else "")
    lines += [r"\bottomrule", r"\end{tabular}",
              r"\caption{" + _tex(caption) + r". 95\% CI: Wilson score interval. $\Delta$ origin: accuracy minus "
              r"origin's on the items both answered (their number where fewer than the row's $n$); $p$: exact "
              r"McNemar test, Holm-adjusted over the methods compared with origin." + note
              + (rf" $\Delta$ {first}: accuracy minus {first}'s under the same method on the items both answered; "
                 r"$p$: exact McNemar test, unadjusted." if compared else "")
              + (f" Macro acc.: the mean of the per-relation accuracies ({relations} relations"
                 + ("; $r$: the number a method answered, where fewer" if (scores["relations"] < relations).any()
                    else "") + ")." if macro else "")
              + (r" Over the multiple-choice items, Conf.: mean probability of the option picked (softmax of the "
                 r"scores it was picked by; vote: its share of the prompts' picks); ECE: expected calibration error, "
                 r"15 equal-width bins; Brier: multi-class Brier score"
                 + (" over the items with one right option." if listed else ".") if calibrated else "")
              + (r" MC2 (TruthfulQA's): mean probability of an item's right options (the options' summed "
                 r"log-likelihoods normalised over the options; vote has none of its own); $\Delta$ MC2: "
                 r"minus origin's on the items both scored, $p$ from a sign-flip test of that mean difference, "
                 r"Holm-adjusted over the methods compared with origin." if listed else "") + "}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


def relation_latex(df: pd.DataFrame, caption: str) -> str:
    """The per-relation table of a LAMA-style probe's appendix: a row per relation with its item count, a column
    per method (origin first) holding its accuracy on that relation, and the macro mean of each column last; ""
    where the rows carry no relation."""
    if "relation" not in df.columns or df["relation"].isna().all():
        return ""
    scores = by_relation(df)
    methods = method_order(scores.index.get_level_values("method"))
    accuracy = scores["accuracy"].unstack("method").reindex(columns=methods)
    counts = df[df["relation"].notna()].groupby("relation")["id"].nunique()
    macro = accuracy.mean()  # each method's mean over the relations it answered: `macro_accuracy`'s figure
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{lr" + "r" * len(methods) + "}", r"\toprule",
             " & ".join(["Relation", "$n$", *(_tex(method_label(m)) for m in methods)]) + r" \\", r"\midrule"]
    lines += [" & ".join([_tex(str(relation)), str(int(counts[relation])), *map(_tex_figure, row)]) + r" \\"
              for relation, row in accuracy.iterrows()]
    lines += [r"\midrule", " & ".join(["Macro mean", "", *map(_tex_figure, macro)]) + r" \\",
              r"\bottomrule", r"\end{tabular}",
              r"\caption{" + _tex(caption) + r": accuracy per relation ($n$: its items; Macro mean: the mean over "
              f"the {len(accuracy)} relations, each weighing alike).}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def popularity_latex(df: pd.DataFrame, caption: str) -> str:
    """The long-tail table of a PopQA-style run: a row per popularity bin with its item count, a column per method
    (origin first) holding its accuracy on the bin's items, a dagger where its difference from origin there is
    significant (Holm-adjusted exact McNemar p < 0.05, over every method and bin); "" where no row carries a
    popularity."""
    if "popularity" not in df.columns or df["popularity"].isna().all():
        return ""
    scores = by_popularity(df)
    methods = method_order(scores.index.get_level_values("method"))
    bins = popularity_bins(scores)
    counts = scores["n"].groupby(level="popularity").max()

    def cell(method: str, name: str) -> str:
        if (method, name) not in scores.index:
            return "--"
        row = scores.loc[(method, name)]
        mark = r"$^\dagger$" if pd.notna(row["p_vs_origin_holm"]) and row["p_vs_origin_holm"] < 0.05 else ""
        return _tex_figure(row["accuracy"]) + mark

    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{lr" + "r" * len(methods) + "}", r"\toprule",
             " & ".join(["Popularity", "$n$", *(_tex(method_label(m)) for m in methods)]) + r" \\", r"\midrule"]
    lines += [" & ".join([_tex(_bin_range(name)).replace("–", "--"), str(int(counts[name])),
                          *(cell(m, name) for m in methods)])
              + r" \\" for name in bins]
    lines += [r"\bottomrule", r"\end{tabular}",
              r"\caption{" + _tex(caption) + f": accuracy per popularity bin of the question's subject ({len(bins)} "
              r"bins of about as many items, least popular first; $n$: its items); $^\dagger$: differs from "
              r"origin's on the bin's items, exact McNemar $p < 0.05$, Holm-adjusted over every method and bin.}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


def popularity_bins(scores: pd.DataFrame) -> list[str]:
    """`by_popularity`'s bin labels, least popular first, by their place ("3: 275–500" is third: labels do not sort
    as text past 9)."""
    return sorted(set(scores.index.get_level_values("popularity")), key=lambda name: int(name.split(":", 1)[0]))


def _bin_range(name: str) -> str:
    """A popularity bin's range, without its place ("275–500"): where the bins are shown in order."""
    return name.split(": ", 1)[1]


def size_latex(rows: pd.DataFrame, caption: str) -> str:
    """An ensemble-size series (`sweep.size_rows`: a row per method, a column per (model, prompts per item)) as a
    booktabs table, a column group per model."""
    models = list(dict.fromkeys(rows.columns.get_level_values(0)))
    sizes = [size for model, size in rows.columns if model == models[0]]
    groups = " & ".join(r"\multicolumn{" + f"{len(sizes)}" + r"}{c}{" + _tex(m) + "}" for m in models)
    rules = " ".join(r"\cmidrule(lr){" + f"{2 + i * len(sizes)}-{1 + (i + 1) * len(sizes)}" + "}"
                     for i in range(len(models)))
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * len(rows.columns) + "}", r"\toprule",
             f" & {groups} \\\\", rules, " & ".join(["Method", *(f"$k={size}$" for _, size in rows.columns)])
             + r" \\", r"\midrule"]
    lines += [" & ".join([_tex(str(name)), *map(_tex_figure, values)]) + r" \\" for name, values in rows.iterrows()]
    lines += [r"\bottomrule", r"\end{tabular}",
              r"\caption{" + _tex(caption) + r": accuracy by prompts per item ($k$: the question and its "
              r"paraphrases run, or the paraphrases alone; mean single prompt: the mean accuracy of the $k$ prompts "
              r"asked alone; oracle: some prompt right).}", r"\end{table}"]
    return "\n".join(lines) + "\n"


TEX_ESCAPES = {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
               "[": "{[}", "]": "{]}",  # a row starting with "[" would be read as the previous \\'s spacing argument
               "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",  # other glyphs in LaTeX's OT1 font
               **{c: "\\" + c for c in "_%&#${}"}}


def _tex(text: str) -> str:
    """`text` as LaTeX sets it, character for character: "--" stays two hyphens (a flag such as --match), not a dash."""
    return re.sub("-(?=-)", "-{}", "".join(TEX_ESCAPES.get(c, c) for c in text))


def _tex_figure(value: float) -> str:
    return "--" if pd.isna(value) else f"{value:.3f}"  # 3 decimals, as the terminal shows; -- where none


def _tex_p(p: float) -> str:
    return "--" if pd.isna(p) else ("$<0.001$" if p < 0.001 else f"{p:#.3g}")  # 3 digits, trailing zeros too: 0.500


CURVE_LIMITS = (-0.03, 1.03)  # an accuracy axis for markers: one at 0 or 1 drawn whole, not cut in half by the frame


def figure(df: pd.DataFrame) -> Figure:
    """Accuracy (bars with Wilson 95% error bars, exact match as ticks) and throughput (items/s) per method,
    side by side; a sweep gets one bar colour per model, methods on the x axis. A single model's run whose rows
    carry popularities gets a third panel: each method's accuracy per popularity bin (`popularity_panel`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = summarize(df).reset_index()
    methods = method_order(summary["method"])
    models = sorted(summary["model"].unique()) if "model" in summary.columns else [None]
    rated = models == [None] and "popularity" in df.columns and bool(df["popularity"].notna().any())
    width = 0.8 / len(models)
    fig = Figure(figsize=(max(6.0, len(methods) * (0.8 + 0.4 * len(models)) + 3) + (4.5 if rated else 0), 3.5),
                 layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global backend, safe in servers and tests
    panels = fig.subplots(1, 3 if rated else 2)
    acc, speed = panels[:2]
    if rated:
        popularity_panel(panels[2], by_popularity(df), methods)
    for i, model in enumerate(models):
        rows = (summary if model is None else summary[summary["model"] == model]).set_index("method").reindex(methods)
        x = np.arange(len(methods)) + (i - (len(models) - 1) / 2) * width
        errors = wilson_bars(rows)
        acc.bar(x, rows["accuracy"], width, yerr=errors, capsize=3, color=f"C{i}",
                label="accuracy, Wilson 95%" if model is None else str(model))
        acc.scatter(x, rows["exact_accuracy"], color="black", marker="_", s=300 * width, zorder=3,
                    label="exact" if i == 0 else None)
        speed.bar(x, rows["items_per_second"].fillna(0), width, color=f"C{i}")
    acc.set(ylim=(0, 1), ylabel="accuracy", title="Accuracy")  # the legend names the bars (a longer title overran)
    acc.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")  # beside the bars, not over them
    # items, not tokens: a multiple-choice item generates none, and per_prompt's tokens are its k answers' sum
    speed.set(ylabel="items / s", title="Throughput")
    for ax in (acc, speed):  # each label ends under its bar: centred, long ones ran into each other
        ax.set_xticks(np.arange(len(methods)), list(map(method_label, methods)), rotation=30, ha="right",
                      rotation_mode="anchor")
    return fig


def popularity_panel(ax: Axes, scores: pd.DataFrame, methods: list[str]) -> None:
    """`by_popularity`'s accuracies as a line per method across the bins, least popular first, with Wilson 95%
    error bars, each method nudged sideways so that bars do not hide each other: PopQA's long-tail figure. A method
    without a row on an item that has a popularity has no line (its colour stays its own, as in the other panels)."""
    bins = popularity_bins(scores)
    rated = set(scores.index.get_level_values("method"))
    for i, method in enumerate(methods):
        if method not in rated:
            continue
        rows = scores.xs(method, level="method").reindex(bins)
        x = np.arange(len(bins)) + (i - (len(methods) - 1) / 2) * 0.06
        errors = wilson_bars(rows)
        ax.errorbar(x, rows["accuracy"], yerr=errors, capsize=2, marker="o", markersize=3, color=f"C{i}",
                    label=method_label(method))
    ax.set(ylim=CURVE_LIMITS, ylabel="accuracy", xlabel="subject popularity", title="Accuracy by popularity")
    ax.set_xticks(np.arange(len(bins)), list(map(_bin_range, bins)), rotation=30, ha="right",
                  rotation_mode="anchor", fontsize="small")
    ax.legend(fontsize="small")


def wilson_bars(rows: pd.DataFrame) -> list[pd.Series]:
    """Error bars [below, above] of `rows`' accuracies from their Wilson 95% intervals (never negative: an interval
    ending at the accuracy itself)."""
    return [(rows["accuracy"] - rows["ci95_low"]).clip(lower=0), (rows["ci95_high"] - rows["accuracy"]).clip(lower=0)]


@literal_text
def plot(df: pd.DataFrame, path: str | Path, note: str = "") -> None:
    """`figure` saved to `path` (PNG, PDF, SVG...), titled with `note` where `report` rescored the rows (`rescored`'s
    caption note): a chart copied into a paper says how its bars were scored, as the table's caption does."""
    fig = figure(df)
    if note:
        fig.suptitle(note.strip(" ()"))
    save_figure(fig, path)
