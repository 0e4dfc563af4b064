"""Planner query quality: how often a planned motion query names the Kinetics-400 action a shot should retrieve.

``bench/data/plan_queries.jsonl`` holds 30 hand-written story sentences, each with the Kinetics-400 class
(from ``../shared/data/kinetics/k400_classes.txt``) whose footage it should retrieve and a few synonyms.
Each sentence is planned on its own as a one-shot passage (characters found in the text, as plan-story
does without --characters), and its ``motion_query`` counts as a hit when it names the class or a synonym:
every content word of the class name or synonym (articles, pronouns and prepositions dropped) appears in
the query, compared by snowball stems (``climbing a tree`` names ``climbing tree``). A **clean** hit is
also free of the sentence's character names and of fantasy beings (what plan-story must write).

Compared in the same run:

* **text as query**: the sentence itself, which is what a storyboard shot without ``motion_query`` retrieves
  with (the baseline);
* **rules**: the rules planner (always);
* **openai**: the endpoint planner, when one is configured (``--llm-base-url``/``--llm-model`` or
  ``STORYREEL_LLM_BASE_URL``/``STORYREEL_LLM_MODEL``); shots it cannot plan fall back to the rules and are
  counted as they come out.

Run (from the repository root)::

    .venv/bin/python bench/plan_queries.py
    .venv/bin/python bench/plan_queries.py --show            # every sentence, query and verdict
    .venv/bin/python bench/plan_queries.py --json out.json   # results as JSON
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

DATA = REPO_ROOT / "bench" / "data" / "plan_queries.jsonl"
CLASSES = REPO_ROOT.parent / "shared" / "data" / "kinetics" / "k400_classes.txt"
_IGNORED = frozenset("a an the his her its their my our your some of or and with to on in into onto at up down "
                     "across along over from for by".split())


def load_rows(path: Path = DATA, classes: Path = CLASSES) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if classes.is_file():
        known = set(classes.read_text().splitlines())
        unknown = [row["action"] for row in rows if row["action"] not in known]
        if unknown:
            raise SystemExit(f"{path}: not Kinetics-400 classes: {unknown}")
    return rows


def content_stems(text: str) -> list[str]:
    from storyboard.motion_lexicon import stem

    text = re.sub(r"\([^)]*\)", " ", text.lower())
    return [stem(word) for word in re.findall(r"[a-z]+", text) if word not in _IGNORED]


def names_action(query: str, row: dict) -> str | None:
    """The class name or synonym ``query`` names (None when it names none)."""
    words = set(content_stems(query))
    for phrase in [row["action"], *row["synonyms"]]:
        needed = content_stems(phrase)
        if needed and set(needed) <= words:
            return phrase
    return None


def clean(query: str, sentence: str) -> bool:
    """Whether ``query`` names none of the sentence's characters (as plan-story finds them) and no fantasy
    being: what the issue asks of a motion query, and what the raw text often fails."""
    from storyboard.motion_lexicon import FANTASY
    from storyboard.story_characters import detect_cast

    words = set(re.findall(r"[a-z]+", query.lower()))
    names = {alias for member in detect_cast(sentence) for alias in member.aliases
             if alias != member.body.split()[-1]}             # "the boy" found as "a boy" is fine
    return not (words & names) and not any(w in FANTASY or w.rstrip("s") in FANTASY for w in words)


def plan_queries(rows: list[dict], planner) -> list[tuple[str, str]]:
    """``(query, backend that wrote it)`` of each sentence, planned as a one-shot passage."""
    from storyboard.planner import plan_passage

    results = []
    for row in rows:
        story, report = plan_passage(row["sentence"], shots=1, planner=planner)
        results.append((story.shots[0].motion_query, report["shots"][0]["backend"]))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--llm-base-url", default=None)
    parser.add_argument("--llm-model", default=None)
    parser.add_argument("--cache-dir", type=Path, default=None, help="answer cache of the endpoint planner")
    parser.add_argument("--show", action="store_true", help="print every sentence, query and verdict")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    from storyboard.planner import configured_base_url, make_planner

    rows = load_rows(args.data)
    systems: dict[str, list[tuple[str, str]]] = {"text as query": [(row["sentence"], "text") for row in rows],
                                                 "rules": plan_queries(rows, make_planner("rules"))}
    if configured_base_url(args.llm_base_url):
        options = {"base_url": args.llm_base_url, "model": args.llm_model}
        if args.cache_dir is not None:
            options["cache_dir"] = args.cache_dir
        systems["openai"] = plan_queries(rows, make_planner("openai", **options))

    results = {}
    for name, outputs in systems.items():
        verdicts = [names_action(query, row) for (query, _), row in zip(outputs, rows)]
        cleans = [clean(query, row["sentence"]) for (query, _), row in zip(outputs, rows)]
        hits = sum(v is not None for v in verdicts)
        clean_hits = sum(v is not None and c for v, c in zip(verdicts, cleans))
        results[name] = {"hits": hits, "clean_hits": clean_hits, "total": len(rows), "fraction": hits / len(rows),
                         "clean_fraction": clean_hits / len(rows),
                         "shots": [{"sentence": row["sentence"], "action": row["action"], "query": query,
                                    "backend": backend, "matched": verdict, "clean": ok}
                                   for row, (query, backend), verdict, ok in zip(rows, outputs, verdicts, cleans)]}
    if args.show:
        for i, row in enumerate(rows):
            print(f"{i + 1:2d}. {row['sentence']}\n    want: {row['action']}")
            for name in systems:
                shot = results[name]["shots"][i]
                mark = "HIT " if shot["matched"] else "miss"
                if name != "text as query":
                    print(f"    {mark} {name:<6} {shot['query']!r}")
    print(f"{'system':<14} {'hits':>5} {'of':>3} {'fraction':>9} {'clean hits':>11} {'clean fraction':>15}")
    for name, result in results.items():
        print(f"{name:<14} {result['hits']:>5} {result['total']:>3} {result['fraction']:>9.2f} "
              f"{result['clean_hits']:>11} {result['clean_fraction']:>15.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
