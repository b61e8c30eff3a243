"""Math word-problem sets for ``python -m evaluation math``: GSM8K, CMATH, MGSM and files of one's own.

One item per record, in any of the layouts these sets ship in:

* JSON Lines or a JSON array of objects. The question is ``question`` (GSM8K, CMATH), ``problem``
  (MATH-style) or ``instruction`` (+ ``input``); the reference is ``answer`` (GSM8K's worked solution
  ending ``#### 72``, or a number), ``golden`` (CMATH), ``std_answer`` or ``output`` (a worked solution:
  BELLE). The item's key is its ``id`` (else its line or index); its category ``grade`` (CMATH),
  ``level``, ``type`` or ``class`` where there is one.
* ``.tsv``: MGSM's layout, a question and its number per line, no header.

A worked reference (text before its final answer) can serve as a few-shot exemplar. Every record of a
file is checked, and every problem reported at once with its file and line.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from zhllama.errors import UserError
from zhllama.math_answer import BOXED, number_text, plain, reference_number

QUESTION_FIELDS = ("question", "problem", "instruction")
REFERENCE_FIELDS = ("answer", "golden", "std_answer", "output")
CATEGORY_FIELDS = ("grade", "level", "type", "class")
_HAN = re.compile(r"[\u4e00-\u9fff]")


@dataclass(frozen=True)
class MathItem:
    key: str
    question: str
    answer: Fraction
    reasoning: str  # the worked solution before its final answer ("" when the reference is a bare number)
    final: str  # the final answer as the reference writes it (GSM8K's text after ####), else the number
    category: str | None = None


@dataclass(frozen=True)
class MathSet:
    path: Path
    items: list[MathItem]
    left_out: int = 0  # records outside --only

    @property
    def language(self) -> str:
        """zh when most question characters are Chinese, else en (picks the prompt's words)."""
        text = "".join(i.question for i in self.items[:200])
        return "zh" if len(_HAN.findall(text)) * 2 > len(re.sub(r"[\s\d\W]", "", text)) else "en"


def final_of(reference: str, number: Fraction) -> str:
    """The final answer as a worked reference writes it after ``####``; otherwise the number itself."""
    after = reference.rsplit("####", 1)[1].strip() if "####" in reference else ""
    return after if after and reference_number(after) == number else number_text(number) or ""


def reasoning_of(reference: str) -> str:
    """A worked solution without its final answer: the text before GSM8K's ``####`` or the last boxed value;
    a reference that is only a number has none."""
    text = reference.strip()
    if "####" in text:
        return text.rsplit("####", 1)[0].strip()
    if BOXED.search(plain(text)):
        return text
    return "" if re.fullmatch(r"[-−+]?[\d,./\s]+", plain(text)) else text


def _records(path: Path) -> list[tuple[str, object]]:
    """(where, record) for each record of a JSON array, JSON Lines or MGSM TSV file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not readable as UTF-8 text ({exc})") from None
    if path.suffix == ".tsv":
        rows = csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(f"{path}:{n}", {"question": r[0], "answer": r[1]} if len(r) == 2 else r)
                for n, r in enumerate(rows, 1) if r]
    if text.lstrip().startswith("["):
        try:
            return [(f"{path}[{n}]", r) for n, r in enumerate(json.loads(text))]
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not a JSON array ({exc})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                out.append((f"{path}:{n}", f"not JSON ({exc.msg})"))
    return out


def _question(record: dict) -> str | None:
    question = next((record[f] for f in QUESTION_FIELDS if isinstance(record.get(f), str) and record[f].strip()), None)
    if question is not None and question == record.get("instruction") and str(record.get("input") or "").strip():
        question = f"{question}\n{record['input']}"
    return None if question is None else question.strip()


def _item(where: str, record: object, problems: list[str]) -> MathItem | None:
    if isinstance(record, str):  # a line that did not parse
        problems.append(f"{where}: {record}")
        return None
    if not isinstance(record, dict):
        problems.append(f"{where}: expected an object (or a TSV line of question and answer), got {str(record)[:80]}")
        return None
    question = _question(record)
    field = next((f for f in REFERENCE_FIELDS if record.get(f) not in (None, "")), None)
    reference = None if field is None else str(record[field])
    number = None if reference is None else reference_number(reference)
    if question is None:
        problems.append(f"{where}: no question (expected non-empty text in one of {list(QUESTION_FIELDS)})")
    if field is None:
        problems.append(f"{where}: no reference answer (expected one of {list(REFERENCE_FIELDS)})")
    elif number is None:
        problems.append(f"{where}.{field}: no number in the reference {reference[-60:]!r}")
    if question is None or number is None:
        return None
    category = next((str(record[f]) for f in CATEGORY_FIELDS if record.get(f) not in (None, "")), None)
    key = str(record["id"]) if record.get("id") not in (None, "") else where.rsplit(":", 1)[-1].rsplit("[", 1)[-1].rstrip("]")
    return MathItem(key, question, number, reasoning_of(reference), final_of(reference, number), category)


def math_questions(path: str | Path) -> list[tuple[str, str]]:
    """(where, question) of every record with a question, whatever its reference (contamination checks only
    the questions: BELLE's eval set is read whole, its math records among them)."""
    return [(where, q) for where, r in _records(Path(path)) if isinstance(r, dict) and (q := _question(r))]


def _kept(record: object, only: dict[str, str]) -> bool:
    return not only or (isinstance(record, dict) and all(str(record.get(k)) == v for k, v in only.items()))


def read_math_set(path: str | Path, only: dict[str, str] | None = None) -> MathSet:
    """Every record checked (``only``: just those whose fields have these values, e.g. BELLE's class=math);
    UserError listing every problem, or the set."""
    path = Path(path)
    records = _records(path)
    kept = [(where, r) for where, r in records if isinstance(r, str) or _kept(r, only or {})]
    problems: list[str] = []
    items = [item for where, r in kept if (item := _item(where, r, problems)) is not None]
    keys = [i.key for i in items]
    problems += [f"{path}: id {k!r} is given twice" for k in sorted({k for k in keys if keys.count(k) > 1})]
    if not items and not problems:
        problems.append(f"{path}: no items" + (f" with {only}" if only else ""))
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise UserError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(shown))
    return MathSet(path, items, len(records) - len(kept))
