"""Read C-Eval, CMMLU and MMLU from their official folder layouts (or from the hub) into items.

    from evaluation.benchmarks import load_benchmark
    bench = load_benchmark("ceval", "data/ceval", split="val", shots=5)   # or data="hub"
    bench.items            # [Item(subject, question, choices, answer, where)], subject by subject
    bench.dev["law"]       # the few-shot exemplars of a subject (dev split, in file order)

Layouts (what the official archives unpack to; ``--data`` is the folder holding the splits):

- ``ceval``: ``{dev,val,test}/{subject}_{split}.csv``, header ``id,question,A,B,C,D,answer``
  (dev adds ``explanation``). The test split's answers are not published: score ``val``.
- ``cmmlu``: ``{dev,test}/{subject}.csv``, header ``,Question,A,B,C,D,Answer``.
- ``mmlu``: ``{dev,val,test}/{subject}_{split}.csv``, no header: question, A, B, C, D, answer.

Everything is checked before any model is loaded; the first problem raises one UserError naming
the file and line: a missing column, an answer outside A-D, a subject with no questions, a
subject present in dev but not in the scored split (or, with shots, the other way round).
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from zhllama.errors import UserError

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Layout:
    splits: tuple[str, ...]
    suffix: bool  # file name is {subject}_{split}.csv (else {subject}.csv)
    columns: tuple[str, ...] | None  # header names of question, A-D, answer; None: no header


LAYOUTS = {
    "ceval": Layout(("dev", "val", "test"), True, ("question", "A", "B", "C", "D", "answer")),
    "cmmlu": Layout(("dev", "test"), False, ("Question", "A", "B", "C", "D", "Answer")),
    "mmlu": Layout(("dev", "val", "test"), True, None),
}
HUB_NAMES = {"ceval": "ceval/ceval-exam", "cmmlu": "haonan-li/cmmlu", "mmlu": "cais/mmlu"}


@dataclass(frozen=True)
class Item:
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str  # one of LETTERS
    where: str  # "file:line" (or "hub:name/subject/split#row")

    @property
    def key(self) -> str:
        """The item's identity by content (wherever its file lies): what contamination reports name."""
        return item_key([self.question, *self.choices])


def item_key(fields: list[str]) -> str:
    return hashlib.blake2b(json.dumps(fields, ensure_ascii=False).encode("utf-8"), digest_size=12).hexdigest()


@dataclass
class Benchmark:
    name: str
    split: str
    items: list[Item]
    dev: dict[str, list[Item]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # the CSVs read (for the results' sha256)

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(item.subject for item in self.items))


def _rows_from_csv(path: Path, layout: Layout) -> list[tuple[int, list[str]]]:
    """(line number, [question, A, B, C, D, answer]) of every data row; a missing column names the file."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            out = []
            if layout.columns is not None:
                header = next(reader, None) or []
                missing = [c for c in layout.columns if c not in header]
                if missing:
                    raise UserError(f"{path}:1: missing column(s) {missing} (header: {header}); expected "
                                    f"{list(layout.columns)}")
                index = [header.index(c) for c in layout.columns]
            else:
                index = list(range(6))
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) <= max(index):
                    raise UserError(f"{path}:{reader.line_num}: {len(row)} fields, expected at least {max(index) + 1}")
                out.append((reader.line_num, [row[i] for i in index]))
            return out
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 ({exc})") from None


def _item(subject: str, cells: list[str], where: str, split: str, need_answers: bool = True) -> Item:
    question, a, b, c, d, answer = (cell.strip() for cell in cells)
    if answer not in LETTERS and (need_answers or answer):
        hint = " (C-Eval does not publish test answers: score --split val)" if not answer and split == "test" else ""
        raise UserError(f"{where}: answer {answer!r} is not one of A, B, C, D{hint}")
    if not question:
        raise UserError(f"{where}: empty question")
    return Item(subject, question, (a, b, c, d), answer, where)


def _subject_of(path: Path, split: str, layout: Layout) -> str:
    stem = path.stem
    return stem[: -len(split) - 1] if layout.suffix and stem.endswith("_" + split) else stem


def _read_split(root: Path, name: str, split: str, layout: Layout,
                need_answers: bool = True) -> tuple[dict[str, list[Item]], list[str]]:
    folder = root / split
    if not folder.is_dir():
        raise UserError(f"{name}: folder {folder} does not exist (expected the official layout: "
                        f"{'/'.join(layout.splits)} folders of CSV files under {root})")
    pattern = f"*_{split}.csv" if layout.suffix else "*.csv"
    files = sorted(folder.glob(pattern))
    if not files:
        raise UserError(f"{name}: no {pattern} files in {folder}")
    by_subject: dict[str, list[Item]] = {}
    for path in files:
        subject = _subject_of(path, split, layout)
        rows = _rows_from_csv(path, layout)
        if not rows:
            raise UserError(f"{path}: subject {subject!r} has no questions")
        by_subject[subject] = [_item(subject, cells, f"{path}:{line}", split, need_answers) for line, cells in rows]
    return by_subject, [str(p) for p in files]


def _read_hub(name: str, split: str, need_answers: bool = True) -> dict[str, list[Item]]:
    """The same items from the Hugging Face hub (needs network and `datasets`)."""
    from datasets import load_dataset

    from .subjects import CEVAL_SUBJECTS, CMMLU_SUBJECTS

    hub = HUB_NAMES[name]
    out: dict[str, list[Item]] = {}
    if name == "mmlu":  # one "all" config; the subject is a field, answers are 0-3, choices a list
        hub_split = {"val": "validation"}.get(split, split)
        for i, rec in enumerate(load_dataset(hub, "all", split=hub_split)):
            cells = [rec["question"], *rec["choices"], LETTERS[int(rec["answer"])]]
            out.setdefault(rec["subject"], []).append(
                _item(rec["subject"], cells, f"hub:{hub}/{hub_split}#{i}", split, need_answers))
        return out
    subjects = list(CEVAL_SUBJECTS if name == "ceval" else CMMLU_SUBJECTS)
    keys = LAYOUTS[name].columns
    for subject in subjects:
        ds = load_dataset(hub, subject, split=split)
        out[subject] = [_item(subject, [rec[k] for k in keys], f"hub:{hub}/{subject}/{split}#{i}", split, need_answers)
                        for i, rec in enumerate(ds)]
    return out


def load_benchmark(name: str, data: str | Path, split: str, shots: int = 0,
                   max_items_per_subject: int | None = None, subjects: list[str] | None = None) -> Benchmark:
    """Read and check a benchmark; ``data="hub"`` downloads it by name (network needed)."""
    if name not in LAYOUTS:
        raise UserError(f"unknown benchmark {name!r}; expected one of {sorted(LAYOUTS)}")
    layout = LAYOUTS[name]
    if split not in layout.splits or split == "dev":
        raise UserError(f"{name}: split {split!r} cannot be scored; expected one of "
                        f"{[s for s in layout.splits if s != 'dev']} (dev holds the few-shot exemplars)")
    if shots < 0:
        raise UserError(f"shots must be >= 0, got {shots}")
    if str(data) == "hub":
        scored, dev, files = _read_hub(name, split), _read_hub(name, "dev"), []
    else:
        root = Path(data)
        if not root.is_dir():
            raise UserError(f"{name}: data folder {root} does not exist")
        scored, files = _read_split(root, name, split, layout)
        dev, dev_files = _read_split(root, name, "dev", layout)
        files += dev_files
    _check_subjects(name, scored, dev, split, shots)
    if subjects:
        unknown = sorted(set(subjects) - set(scored))
        if unknown:
            raise UserError(f"{name}: subjects {unknown} are not in the {split} split")
        scored = {s: scored[s] for s in subjects}
    if shots and any(len(dev[s]) < shots for s in scored):
        short = {s: len(dev[s]) for s in scored if len(dev[s]) < shots}
        raise UserError(f"{name}: --shots {shots} but the dev split has fewer exemplars for {short}")
    items = [it for s in scored for it in scored[s][:max_items_per_subject]]
    return Benchmark(name, split, items, {s: dev.get(s, [])[:shots] for s in scored}, files)


def read_all_splits(name: str, data: str | Path) -> tuple[dict[str, list[Item]], list[str]]:
    """Every item of every split folder present (dev, val, test; all of them from the hub), checked; and the
    files read. Unpublished answers (C-Eval's test split) are allowed: only the text is needed."""
    if name not in LAYOUTS:
        raise UserError(f"unknown benchmark {name!r}; expected one of {sorted(LAYOUTS)}")
    layout = LAYOUTS[name]
    if str(data) == "hub":
        return {split: [it for items in _read_hub(name, split, need_answers=False).values() for it in items]
                for split in layout.splits}, []
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"{name}: data folder {root} does not exist")
    splits = [s for s in layout.splits if (root / s).is_dir()]
    if not splits:
        raise UserError(f"{name}: none of the folders {list(layout.splits)} is in {root} (expected the official "
                        f"layout: {'/'.join(layout.splits)} folders of CSV files)")
    items, files = {}, []
    for split in splits:
        by_subject, split_files = _read_split(root, name, split, layout, need_answers=False)
        items[split] = [item for subject_items in by_subject.values() for item in subject_items]
        files += split_files
    return items, files


def _check_subjects(name: str, scored: dict, dev: dict, split: str, shots: int) -> None:
    only_dev = sorted(set(dev) - set(scored))
    if only_dev:
        raise UserError(f"{name}: subject(s) {only_dev} are in dev but not in {split} "
                        f"(e.g. {dev[only_dev[0]][0].where.rsplit(':', 1)[0]}); the folders must hold the same subjects")
    only_scored = sorted(set(scored) - set(dev))
    if only_scored and shots:
        raise UserError(f"{name}: subject(s) {only_scored} are in {split} but have no dev file for few-shot exemplars "
                        f"(e.g. {scored[only_scored[0]][0].where.rsplit(':', 1)[0]})")
