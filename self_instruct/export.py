"""Export instruction records to what trainers and reviewers read, and read reviewed sheets back.

    python -m self_instruct.export out/generated.jsonl --format messages --output train.jsonl
    python -m self_instruct.export out --format xlsx --output review.xlsx        # a run's directory
    python -m self_instruct.export review.xlsx --format jsonl --output reviewed.jsonl

Inputs are generate's or documents' output (generated.jsonl, regen.json, or the output directory,
which means its generated.jsonl), any Alpaca JSON list or JSONL, or a sheet this command wrote
(.csv/.xlsx, or named with --from csv|xlsx). Several inputs (separated by spaces or commas) are
concatenated in order. A record needs a non-empty instruction and output; input is optional.

Formats, and what reads them:
- alpaca             {instruction, input, output} (Alpaca's train.py, LLaMA-Factory)
- jsonl              the same, by default one record a line
- messages           {"messages": [system?, user, assistant]}: OpenAI chat fine-tuning, TRL's
                     SFTTrainer, axolotl's chat_template; user = instruction, a blank line, input
- prompt-completion  {"prompt", "completion"}: OpenAI's legacy fine-tuning, TRL; the prompt is laid
                     out with the training template (prompts/train_*.txt), as train.py does
- sharegpt           {"conversations": [{"from", "value"}], "system"?}, and its entry in
                     dataset_info.json beside it, for LLaMA-Factory
- preference         {"prompt", "chosen", "rejected"}: TRL's DPO data, of the pairs that
                     self_instruct.preferences makes (conversational messages with --chat)
- csv, xlsx          a row a record for people to review (SHEET_COLUMNS); edited rows come back as
                     records, joined to what they were by id
- hf                 a datasets.Dataset saved with save_to_disk (a DatasetDict with --split)

For every JSON format the output's suffix decides the layout: .json a JSON list, .jsonl a record a
line (any other suffix: a list for alpaca and sharegpt, lines for the rest).

Provenance goes with every record: a stable `id` (record_id) and, where the record has them, its
`metadata` (for a documents run: source, page, headings, start, end, chunk...) and the engine's
`provenance` (run, unit, model), as they are, beside the format's own fields; in hf as JSON text
columns; in a sheet as columns a person can read and a last column, `json`, holding the rest,
so a reviewed sheet gives back whole records. `--provenance drop` leaves only the format's fields.

A record whose metadata.holdout is true is never exported: it is held out for evaluation.
Every output is written to a temp file and renamed, so a failed export leaves no partial file.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .cli import run, words_as_flag
from .engine.pool import GENERATED, OUTPUTS
from .io.datasets import check_outputs
from .core.templates import load_training_templates, render_training_prompt
from .errors import ConfigError, DataError
from .io.jsonl import (
    dumps,
    fsync_dir,
    iter_records,
    read_json,
    type_name,
    write_json_atomic,
    write_text_atomic,
)

FORMATS = ("alpaca", "jsonl", "messages", "prompt-completion", "sharegpt", "preference", "csv", "xlsx", "hf")
JSON_FORMATS = ("alpaca", "jsonl", "messages", "prompt-completion", "sharegpt", "preference")
LISTS_BY_DEFAULT = ("alpaca", "sharegpt")  # the layout when the suffix is neither .json nor .jsonl
SHEETS = ("csv", "xlsx")
PROVENANCE_CHOICES = ("keep", "drop")
TEXT_COLUMNS = ("instruction", "input", "output")
# Review columns: the sheet's name for each, where it lives in a record, and its type. Where a
# record's value and the cell differ, the cell was edited and wins on the way back.
META_COLUMNS = {"source": ("metadata.source", str), "page": ("metadata.page", int),
                "last_page": ("metadata.last_page", int), "headings": ("metadata.headings", list),
                "start": ("metadata.start", int), "end": ("metadata.end", int), "unit": ("provenance.unit", int),
                "similarity": ("avg_similarity_score", float), "score": ("metadata.score", float)}
HEADING_JOIN = " > "  # a heading path in one cell: "Part One > Soil"
# The last column: the record's other fields (metadata, provenance, similarity lists) as JSON.
JSON_COLUMN = "json"
SHEET_COLUMNS = ("id",) + TEXT_COLUMNS + tuple(META_COLUMNS) + (JSON_COLUMN,)
INSTALL_HINT = "pip install 'self_instruct[export]'"
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP's CSV injection list).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
XLSX_CELL_LIMIT = 32767  # characters: Excel refuses longer cells
ID_PREFIX = "rec-"  # a letter first: no spreadsheet re-types an id as a number or a date


# -----------------------------------------------------------------------------
# reading: any input, as checked records


def read_inputs(paths: Sequence[str | Path], sheet: str | None = None) -> tuple[list[dict], int]:
    """Records of every input in order, and how many were held out (metadata.holdout) and skipped."""
    records, held_out = [], 0
    for path in paths:
        for record in read_input(Path(path), sheet):
            if (record.get("metadata") or {}).get("holdout"):
                held_out += 1
            else:
                records.append(record)
    return records, held_out


def read_input(path: Path, sheet: str | None = None) -> Iterator[dict]:
    """Records of one input: a run's directory, a JSON list or JSONL file, or a sheet."""
    if path.is_dir():
        if not (path / "generated.jsonl").is_file():
            raise DataError(f"{path}: a directory without generated.jsonl; pass a run's output directory or a file")
        path = path / "generated.jsonl"
    kind = sheet or {".csv": "csv", ".xlsx": "xlsx"}.get(path.suffix.lower())
    if kind:
        yield from read_sheet(path, kind)
        return
    for lineno, item in iter_records(path):
        try:
            yield check_record(item)
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: {exc}") from None


def check_record(item: dict) -> dict:
    """The record itself when it has what every format needs, else ValueError naming the field.

    >>> check_record({"instruction": "Name a colour.", "output": "Red."})["input"]
    ''
    """
    for field in TEXT_COLUMNS:
        if field not in item and field != "input":
            raise ValueError(f'field "{field}" is missing')
        value = item.get(field, "")
        if not isinstance(value, str):
            raise ValueError(f'field "{field}" must be text (got {type_name(value)})')
        if field != "input" and not value.strip():
            raise ValueError(f'field "{field}" is empty')
    if not isinstance(item.get("metadata", {}), dict):
        raise ValueError('field "metadata" must be an object')
    identity = item.get("id")
    if identity is not None and (isinstance(identity, bool) or not isinstance(identity, (str, int))):
        raise ValueError(f'field "id" must be text or a whole number (got {type_name(identity)})')
    return {"input": "", **item}


# -----------------------------------------------------------------------------
# ids: one per record, stable across exports


def record_id(record: dict) -> str:
    """The id a record gets when it has none: a digest of where the engine made it (run, unit)
    and its three texts, so the same record has the same id in every export, whatever else is
    exported beside it; edited text keeps the id it went out with (the sheet carries it).

    >>> record_id({"instruction": "Add 2 and 3.", "input": "", "output": "5", "provenance": {"run": "r", "unit": 0}})
    'rec-dde03197dd946944'
    """
    made = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    key = dumps([made.get("run"), made.get("unit"), record["instruction"], record.get("input", ""), record["output"]])
    return ID_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def assign_ids(records: Sequence[dict]) -> list[dict]:
    """The records, each with a unique "id": its own (as text) where it has one that no record
    before it took, else record_id's, with -2, -3... after an id already taken (the same text
    twice). Records are copied, never changed.

    >>> [r["id"] for r in assign_ids([{"id": 7, "instruction": "A.", "output": "B."}] * 2)]
    ['7', 'rec-9df1b132cc81a57e']
    """
    given = [str(r["id"]) if r.get("id") is not None and str(r["id"]) != "" else None for r in records]
    taken, firsts = set(), set()
    for i, identity in enumerate(given):  # the first record with an id keeps it; a later one gets a new one
        if identity is not None and identity not in taken:
            taken.add(identity)
            firsts.add(i)
    out = []
    for i, record in enumerate(records):
        identity = given[i] if i in firsts else None
        if identity is None:
            base = identity = record_id(record)
            n = 1
            while identity in taken:
                n += 1
                identity = f"{base}-{n}"
            taken.add(identity)
        out.append({**record, "id": identity})
    return out


# -----------------------------------------------------------------------------
# one record in each format


def carried(record: dict) -> dict:
    """What goes beside a format's own fields: the id, then the record's metadata and the engine's
    provenance as they are (each only where the record has one)."""
    return {key: record[key] for key in ("metadata", "provenance") if record.get(key)}


def to_alpaca(record: dict) -> dict:
    return {field: record[field] for field in TEXT_COLUMNS}


def user_text(record: dict) -> str:
    """What the user says: the instruction, then the input after a blank line when there is one."""
    return f"{record['instruction']}\n\n{record['input']}" if record["input"] else record["instruction"]


def to_messages(record: dict, system: str | None) -> dict:
    """OpenAI's chat fine-tuning record.

    >>> to_messages({"instruction": "Add.", "input": "2, 3", "output": "5"}, None)["messages"][0]
    {'role': 'user', 'content': 'Add.\\n\\n2, 3'}
    """
    turns = [{"role": "system", "content": system}] if system else []
    # a conversation (generate --turns) keeps every turn in metadata.messages
    turns += [{"role": m["role"], "content": m["content"]} for m in record.get("metadata", {}).get("messages") or
              [{"role": "user", "content": user_text(record)}, {"role": "assistant", "content": record["output"]}]]
    return {"messages": turns}


def to_sharegpt(record: dict, system: str | None) -> dict:
    turns = to_messages(record, None)["messages"]
    conversation = {"conversations": [{"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]), "value": m["content"]}
                                      for m in turns]}
    return {**conversation, "system": system} if system else conversation


def to_preference(record: dict, system: str | None, chat: bool) -> dict:
    """TRL's preference row of a pair `self_instruct.preferences` made (the chosen answer is the
    record's output, the rejected one metadata.rejected): text, or conversational with --chat.

    >>> to_preference({"instruction": "Add 2 and 2.", "input": "", "output": "4.", "metadata": {"rejected": "5."}}, None, False)
    {'prompt': 'Add 2 and 2.', 'chosen': '4.', 'rejected': '5.'}
    """
    rejected = (record.get("metadata") or {}).get("rejected")
    if not isinstance(rejected, str) or not rejected.strip():
        raise DataError(f"record {record['id']}: no metadata.rejected; --format preference writes the pairs "
                        f"python -m self_instruct.preferences makes")
    if not chat:
        return {"prompt": user_text(record), "chosen": record["output"], "rejected": rejected}
    prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text(record)}]
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": record["output"]}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def prompt_completion(templates: dict[str, str]) -> Callable[[dict], dict]:
    """The record laid out as train.py lays it out: the prompt template, then the output."""
    return lambda record: {"prompt": render_training_prompt(record, templates), "completion": record["output"]}


def with_provenance(convert: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """`convert`, with the id first and the record's metadata and provenance after the format's fields."""
    return lambda record: {"id": record["id"], **convert(record), **carried(record)}


def hf_row(record: dict) -> dict:
    """A row of the hf export: text columns only, metadata and provenance as JSON text (an Arrow
    column needs one type, and two records' metadata seldom agree on theirs)."""
    return {"id": record["id"], **to_alpaca(record), "metadata": dumps(record.get("metadata") or {}),
            "provenance": dumps(record.get("provenance") or {})}


# -----------------------------------------------------------------------------
# sheets: a row a record, cells that survive spreadsheets, and the way back


def lookup(record: dict, where: str):
    """The value at a dotted path ("metadata.source"), or None."""
    value = record
    for key in where.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def cell_of(column: str, value):
    """What a review column's cell holds for a record's value: numbers (floats to 4 decimals, a
    reviewer's precision, and both sheets agree), text, a heading path joined by " > ", None for
    nothing; any other value as its JSON text."""
    if value is None or value == [] or value == "":
        return None
    if column == "headings" and isinstance(value, list) and all(isinstance(h, str) for h in value):
        return HEADING_JOIN.join(value)
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    return dumps(value)


def to_row(record: dict) -> dict:
    """The sheet row of a record: id, texts, review columns and the rest as JSON.

    >>> row = to_row({"id": "rec-1", "instruction": "Q?", "input": "", "output": "A.",
    ...               "metadata": {"source": "a.pdf", "page": 3, "headings": ["I", "Soil"]}})
    >>> row["source"], row["page"], row["headings"], row["json"]
    ('a.pdf', 3, 'I > Soil', '{"metadata": {"source": "a.pdf", "page": 3, "headings": ["I", "Soil"]}}')
    """
    row = {"id": record.get("id"), **{field: record[field] for field in TEXT_COLUMNS}}
    for column, (where, _) in META_COLUMNS.items():
        row[column] = cell_of(column, lookup(record, where))
    rest = {k: v for k, v in record.items() if k not in ("id", *TEXT_COLUMNS)}
    row[JSON_COLUMN] = dumps(rest) if rest else None
    return row


def from_row(row: dict) -> dict:
    """The record of a sheet row: the json column's fields, then the texts and id of the row's
    cells, then each review cell that differs from what the record held (an edited cell wins; an
    emptied one removes the value). `row` holds each cell as sheet_value read it."""
    rest = row.get(JSON_COLUMN)
    if rest is not None:
        try:
            rest = json.loads(rest)
        except json.JSONDecodeError as exc:
            raise ValueError(f'column "{JSON_COLUMN}" is not valid JSON ({exc.msg} at column {exc.colno}); '
                             f"restore it from the export, or empty it") from None
        if not isinstance(rest, dict):
            raise ValueError(f'column "{JSON_COLUMN}" must hold a JSON object (got {type_name(rest)})')
    record = dict(rest or {})
    if row.get("id") is not None:
        record["id"] = row["id"]
    record.update({field: row.get(field) or "" for field in TEXT_COLUMNS})
    for column, (where, kind) in META_COLUMNS.items():
        if column not in row:
            continue  # the reviewer deleted the column: the json column's value stands
        written = cell_of(column, lookup(record, where))
        if same_cell(row[column], written):
            continue
        value = typed(column, row[column], kind)
        *parents, key = where.split(".")
        target = record
        for parent in parents:
            inner = dict(target[parent]) if isinstance(target.get(parent), dict) else {}
            target[parent] = inner
            target = inner
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return record


def same_cell(cell, written) -> bool:
    """Whether a review cell still holds what was written (as text or as the same number)."""
    if cell == written or (cell is None and written is None):
        return True
    if isinstance(cell, (int, float)) and isinstance(written, (int, float)) and not isinstance(cell, bool):
        return float(cell) == float(written)
    return str(cell) == str(written) if cell is not None and written is not None else False


def typed(column: str, cell, kind):
    """An edited review cell as the record holds the value: a number, text or a heading path."""
    if cell is None:
        return None
    if kind is list:
        return [part.strip() for part in str(cell).split(HEADING_JOIN.strip())] if str(cell).strip() else None
    if kind is str:
        return str(cell)
    try:
        if isinstance(cell, bool):
            raise ValueError
        number = float(cell)
        if kind is int:
            if not number.is_integer():
                raise ValueError
            return int(number)
        return number
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f'column "{column}" must be {what} (got {cell!r})') from None


def escape_cell(text: str) -> str:
    """Text a spreadsheet shows and does not run: a leading apostrophe before formula-like text.

    One apostrophe is also added before text that already starts with one followed by a formula
    character or another apostrophe, so unescape_cell gives back exactly what went in.
    >>> escape_cell("=SUM(A1:A3)"), unescape_cell(escape_cell("=SUM(A1:A3)"))
    ("'=SUM(A1:A3)", '=SUM(A1:A3)')
    """
    if text.startswith(FORMULA_START) or (text.startswith("'") and text[1:].startswith(FORMULA_START + ("'",))):
        return "'" + text
    return text


def unescape_cell(text: str) -> str:
    if text.startswith("'") and text[1:].startswith(FORMULA_START + ("'",)):
        return text[1:]
    return text


_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]|_(?=x[0-9A-Fa-f]{4}_)")
_XML_ESCAPED = re.compile(r"_x([0-9A-Fa-f]{4})_")


def escape_xlsx(text: str) -> str:
    """Characters XML cannot hold as OOXML's _xHHHH_ escapes, which Excel reads back; a literal
    "_x0041_" keeps its underscore as _x005F_ (openpyxl leaves both to the caller).

    >>> escape_xlsx("page\\x0cbreak _x0041_"), unescape_xlsx(escape_xlsx("page\\x0cbreak _x0041_"))
    ('page_x000C_break _x005F_x0041_', 'page\\x0cbreak _x0041_')
    """
    return _XML_ILLEGAL.sub(lambda m: f"_x{ord(m.group()):04X}_", text)


def unescape_xlsx(text: str) -> str:
    return _XML_ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text)


def write_csv(path: Path, rows: Iterable[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # RFC 4180 quoting: commas, quotes and newlines stay inside a cell
    writer.writerow(SHEET_COLUMNS)
    for row in rows:
        writer.writerow(["" if row[c] is None else escape_cell(row[c]) if isinstance(row[c], str) else repr(row[c])
                         for c in SHEET_COLUMNS])
    # The BOM tells Excel the file is UTF-8; without it Excel reads emoji and Hebrew as Latin-1.
    write_text_atomic(path, "\ufeff" + buffer.getvalue())


# Column widths of the xlsx sheet, in SHEET_COLUMNS order; the json column is hidden.
XLSX_WIDTHS = (20, 50, 30, 60, 24, 6, 6, 30, 7, 7, 6, 10, 7, 12)


def write_xlsx(path: Path, rows: Iterable[dict]) -> None:
    openpyxl = require("openpyxl")
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Alignment, Font
    from openpyxl.utils import get_column_letter

    rows = list(rows)
    check_cell_lengths(rows)  # before the workbook exists: openpyxl cannot abandon a half-written one cleanly
    book = openpyxl.Workbook(write_only=True)  # streams rows instead of holding a cell object each
    sheet = book.create_sheet("records")
    sheet.freeze_panes = "C2"  # the header and the id and instruction stay in view
    for number, width in enumerate(XLSX_WIDTHS, 1):
        sheet.column_dimensions[get_column_letter(number)].width = width
    sheet.column_dimensions[get_column_letter(len(SHEET_COLUMNS))].hidden = True  # json: for the way back
    header = [WriteOnlyCell(sheet, value=name) for name in SHEET_COLUMNS]
    for cell in header:
        cell.font = Font(bold=True)
    sheet.append(header)
    wrap = Alignment(wrap_text=True, vertical="top")
    for row in rows:
        cells = []
        for column in SHEET_COLUMNS:
            value = row[column]
            if isinstance(value, str):
                cell = WriteOnlyCell(sheet, value=escape_xlsx(value))
                # A string cell, never a formula, and marked so Excel keeps it text when edited.
                cell.data_type, cell.quotePrefix, cell.alignment = "s", value.startswith(FORMULA_START), wrap
            else:
                cell = WriteOnlyCell(sheet, value=value)
            cells.append(cell)
        sheet.append(cells)
    buffer = io.BytesIO()
    book.save(buffer)
    write_text_atomic(path, buffer.getvalue())


def check_cell_lengths(rows: Sequence[dict]) -> None:
    for number, row in enumerate(rows, 1):
        for column in (*TEXT_COLUMNS, JSON_COLUMN):
            if len(row[column] or "") > XLSX_CELL_LIMIT:
                raise DataError(f"record {number}: its {column} has {len(row[column]):,} characters, more than an xlsx "
                                f"cell holds ({XLSX_CELL_LIMIT:,}); export it as csv")


class Formula(str):
    """An xlsx cell that holds a formula (its text), which a sheet's way back refuses."""


def read_sheet(path: Path, kind: str) -> Iterator[dict]:
    """Records of a sheet this command wrote and people edited; a bad row is one error naming it.

    The header row names the columns (in any order; instruction and output are required, unknown
    columns are ignored); blank rows are skipped. A row whose id an earlier row has (a copied row)
    or that has none (an added row) comes back without one, and gets a new one on export.
    """
    rows = csv_rows(path) if kind == "csv" else xlsx_rows(path)
    header = [str(name).strip() if name is not None else "" for name in next(rows, [])]
    missing = [name for name in ("instruction", "output") if name not in header]
    if missing:
        raise DataError(f"{path}: row 1: the header lacks {' and '.join(map(repr, missing))} "
                        f"(a sheet needs the columns {', '.join(SHEET_COLUMNS)})")
    positions = {name: header.index(name) for name in SHEET_COLUMNS if name in header}
    seen: set[str] = set()
    for number, cells in enumerate(rows, 2):
        if all(cell is None or cell == "" for cell in cells):
            continue
        try:
            if len(cells) > len(header) and any(cell not in (None, "") for cell in cells[len(header):]):
                raise ValueError(f"{len(cells)} cells, but the header names {len(header)} columns")
            row = {name: sheet_value(name, cells[i] if i < len(cells) else None, kind) for name, i in positions.items()}
            if row.get("id") in seen:
                row["id"] = None
            seen.add(row.get("id"))
            yield check_record(from_row(row))
        except ValueError as exc:
            raise DataError(f"{path}: row {number}: {exc}") from None


def sheet_value(column: str, cell, kind: str):
    """A cell as the sheet holds it, unescaped: text (a number typed into a text cell is the text
    of that number), a number, or None when empty; a formula or a date is refused."""
    if isinstance(cell, Formula):
        raise ValueError(f'column "{column}" holds a formula ({cell[:40]}), which is refused rather than trained on '
                         f"as its text; type the value itself, or put an apostrophe before it to keep it as text")
    if cell is None or cell == "":
        return None
    if isinstance(cell, bool) or not isinstance(cell, (str, int, float)):
        raise ValueError(f'column "{column}" must be text or a number (got {cell!r})')
    if not isinstance(cell, str):
        if column in (*TEXT_COLUMNS, "id"):
            return str(int(cell)) if isinstance(cell, float) and cell.is_integer() else str(cell)
        return cell
    return unescape_cell(cell) if kind == "csv" else unescape_xlsx(cell)


def csv_rows(path: Path) -> Iterator[list]:
    # The csv module refuses cells over 128 KiB by default; a long document chunk is one cell.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    try:
        # newline="": line breaks inside quoted cells are the csv module's to read, not the file's.
        with open(path, newline="", encoding="utf-8-sig") as f:
            yield from csv.reader(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                        f"save it as 'CSV UTF-8'") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a CSV file ({exc})") from None


def xlsx_rows(path: Path) -> Iterator[tuple]:
    """The first sheet's rows as values; a formula cell as a Formula of its text (never its
    cached result, and never the formula's text taken as data)."""
    openpyxl = require("openpyxl")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:  # a file object: openpyxl refuses names not ending in .xlsx
        try:
            book = openpyxl.load_workbook(f, read_only=True)
        except Exception as exc:  # openpyxl raises zipfile, KeyError and XML errors for a file that is not xlsx
            raise DataError(f"{path}: not an xlsx workbook ({type(exc).__name__}: {exc})") from None
        try:
            for row in book.worksheets[0].iter_rows():
                yield tuple(formula_text(cell.value) if cell.data_type == "f" else cell.value for cell in row)
        finally:
            book.close()


def formula_text(value) -> Formula:
    return Formula(getattr(value, "text", None) or str(value))


# -----------------------------------------------------------------------------
# writing: files of each format, a seeded split, LLaMA-Factory's dataset_info.json


def dumps_line(obj) -> str:
    """A JSONL line for other tools: UTF-8 as is, but U+2028, U+2029 and U+0085 escaped, because
    readers that split lines with str.splitlines (or JavaScript before ES2019) break a record there.

    >>> dumps_line({"text": "a\\u2028b é"})
    '{"text": "a\\\\u2028b é"}'
    """
    text = json.dumps(obj, ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    jsonlines = require("jsonlines")
    buffer = io.StringIO()
    with jsonlines.Writer(buffer, dumps=dumps_line) as writer:
        writer.write_all(rows)
    write_text_atomic(path, buffer.getvalue())


def write_json_list(path: Path, rows: Iterable[dict]) -> None:
    write_json_atomic(path, list(rows))


def json_layout(format: str, path: Path) -> str:
    """"list" or "lines": what a JSON format's output holds, by its suffix.

    >>> json_layout("sharegpt", Path("data.jsonl")), json_layout("messages", Path("chat.json"))
    ('lines', 'list')
    """
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        return "list" if suffix == ".json" else "lines"
    return "list" if format in LISTS_BY_DEFAULT else "lines"


def saver(format: str, path: Path) -> Callable[[Path, Iterable[dict]], None]:
    if format in JSON_FORMATS:
        return write_json_list if json_layout(format, path) == "list" else write_jsonl
    return {"csv": write_csv, "xlsx": write_xlsx}[format]


def write_hf(output: Path, parts: dict[str, list[dict]]) -> None:
    """A datasets.Dataset (or a DatasetDict of the parts) saved with save_to_disk at output."""
    datasets = require("datasets")
    if output.exists() and not (output.is_dir() and (not any(output.iterdir()) or (output / "dataset_info.json").exists()
                                                      or (output / "dataset_dict.json").exists())):
        raise ConfigError(f"--output {output} exists and is not a saved dataset; choose a new path")
    first = next((rows[0] for rows in parts.values() if rows), {})
    features = datasets.Features({name: datasets.Value("string") for name in first or TEXT_COLUMNS})
    made = {name: datasets.Dataset.from_list(rows, features=features) for name, rows in parts.items()}
    dataset = made[""] if "" in made else datasets.DatasetDict(made)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dataset.save_to_disk(str(tmp))
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(output.parent)


def balanced(records: Sequence[dict], tag: str, seed: int) -> list[dict]:
    """Every value of metadata[tag] (a persona, a topic, a source...) keeps at most as many records
    as the rarest value has, chosen with `seed`, in their order; records without the tag count as
    one more value.

    >>> [r["instruction"] for r in balanced([{"instruction": x, "metadata": {"p": x[0]}} for x in "aa ab b".split()], "p", 0)]
    ['ab', 'b']
    """
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(str((record.get("metadata") or {}).get(tag)), []).append(i)
    share = min(len(members) for members in groups.values())
    rng = random.Random(seed)
    keep = {i for members in groups.values() for i in rng.sample(members, share)}
    return [record for i, record in enumerate(records) if i in keep]


def split_records(records: Sequence[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded train/test split: `fraction` of the records train; each part keeps the input order.

    >>> split_records([{"n": i} for i in range(10)], 0.8, seed=1)[1]
    [{'n': 1}, {'n': 2}]
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"--split must be between 0 and 1, the fraction that trains (got {fraction})")
    if len(records) < 2:
        raise ConfigError(f"--split needs at least 2 records (got {len(records)})")
    size = min(len(records) - 1, max(1, round(len(records) * (1 - fraction))))
    test = set(random.Random(seed).sample(range(len(records)), size))
    return ([r for i, r in enumerate(records) if i not in test], [r for i, r in enumerate(records) if i in test])


def part_path(output: Path, part: str) -> Path:
    """data.jsonl -> data.train.jsonl for the part "train"; the path itself for the whole."""
    return output.with_name(f"{output.stem}.{part}{output.suffix}") if part else output


def add_dataset_info(paths: Sequence[Path], system: bool) -> Path:
    """Add (or replace) each sharegpt file's entry in dataset_info.json beside it, LLaMA-Factory's
    list of datasets; the entry is named after the file (data.train.json -> data_train)."""
    info_path = paths[0].parent / "dataset_info.json"
    info = read_json(info_path) or {}
    if not isinstance(info, dict):
        raise DataError(f"{info_path}: expected a JSON object of datasets")
    columns = {"messages": "conversations", **({"system": "system"} if system else {})}
    tags = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
    for path in paths:
        info[path.stem.replace(".", "_")] = {"file_name": path.name, "formatting": "sharegpt", "columns": columns, "tags": tags}
    write_json_atomic(info_path, info)
    return info_path


def converter(format: str, system: str | None, templates: dict[str, str] | None, keep: bool,
              chat: bool = False) -> Callable[[dict], dict]:
    """A record (with its id) to what `format` writes for it; `keep`: its id and provenance too."""
    if format in SHEETS:
        return to_row if keep else lambda r: {**to_row({k: r[k] for k in TEXT_COLUMNS}), "id": None}
    if format == "hf":
        return hf_row if keep else to_alpaca
    convert = {"messages": lambda r: to_messages(r, system), "sharegpt": lambda r: to_sharegpt(r, system),
               "preference": lambda r: to_preference(r, system, chat)}.get(format, to_alpaca)
    if format == "prompt-completion":
        convert = prompt_completion(templates or load_training_templates())
    return with_provenance(convert) if keep else convert


def export(records: Sequence[dict], format: str, output: str | Path, *, system: str | None = None,
           split: float | None = None, seed: int = 42, templates: dict[str, str] | None = None,
           provenance: str = "keep", chat: bool = False) -> list[Path]:
    """Write records in `format` to output (two files, or a DatasetDict, with a split); returns what was written.
    Every record gets its id (assign_ids) before the split, so a split does not change them."""
    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)} (got {format!r})")
    if provenance not in PROVENANCE_CHOICES:
        raise ConfigError(f"--provenance must be keep or drop (got {provenance!r})")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    records = assign_ids(records)
    parts = {"": records} if split is None else dict(zip(("train", "test"), split_records(records, split, seed)))
    convert = converter(format, system, templates, provenance == "keep", chat)
    if format == "hf":
        write_hf(output, {name: [convert(r) for r in rows] for name, rows in parts.items()})
        return [output]
    written = []
    for name, rows in parts.items():
        path = part_path(output, name)
        saver(format, path)(path, (convert(r) for r in rows))
        written.append(path)
    if format == "sharegpt":
        written.append(add_dataset_info(written, system=bool(system)))
    return written


def require(module: str):
    """Import a library of the [export] extra, or say how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"this export needs {module}: {INSTALL_HINT}") from None


# -----------------------------------------------------------------------------
# the command


def main(input: str, format: str = "jsonl", output: str | None = None, system: str | None = None,
         split: float | None = None, seed: int = 42, from_: str | None = None,
         prompt_with_input: str | None = None, prompt_no_input: str | None = None, provenance: str = "keep",
         chat: bool = False, balance: str | None = None) -> None:
    """Export instruction records to a trainer's format or a sheet for review, or read a sheet back.

    Records whose metadata.holdout is true are skipped and counted. Every record goes out with a
    stable id and its metadata and provenance beside the format's fields (--provenance drop: not).

    Args:
        input: files or run directories (several: separated by spaces or commas), concatenated in order.
        format: alpaca, jsonl, messages, prompt-completion, sharegpt, preference (TRL's prompt/chosen/rejected
            rows of the pairs self_instruct.preferences makes), csv, xlsx or hf.
        output: the file to write (a directory for hf); for JSON formats .json writes a JSON list, .jsonl a record a line.
        system: a system message for messages and sharegpt.
        split: a seeded train/test split, e.g. 0.95: OUTPUT's .train and .test files.
        seed: the split's seed.
        from_: csv or xlsx: read the inputs as sheets (implied by a .csv or .xlsx name); written --from.
        prompt_with_input: the training template with {instruction} and {input}, for prompt-completion.
        prompt_no_input: the training template with {instruction}, for prompt-completion.
        provenance: keep (id, metadata and provenance go with each record) or drop (the format's own fields only).
        chat: with --format preference, conversational rows (lists of role/content messages) instead of text.
        balance: a metadata key (persona, topic, source...): each of its values keeps at most as many
            records as the rarest one has (chosen with --seed), so no tag dominates.
    """
    if output is None:
        raise ConfigError("--output is required: the file to write (a directory for --format hf)")
    if from_ is not None and from_ not in SHEETS:
        raise ConfigError(f"--from must be csv or xlsx (got {from_!r}); JSON and JSONL inputs need no --from")
    if provenance not in PROVENANCE_CHOICES:
        raise ConfigError(f"--provenance must be keep or drop (got {provenance!r})")
    paths = [Path(p) for p in input.split(",") if p]
    check_export_outputs(paths, Path(output), format, split)
    records, held_out = read_inputs(paths, from_)
    if not records:
        raise DataError(f"{input}: no records to export" + (f" ({held_out} held out)" if held_out else ""))
    if balance:
        counts = Counter(str((r.get("metadata") or {}).get(balance)) for r in records)
        records = balanced(records, balance, seed)
        print(f"self_instruct: --balance {balance}: {len(counts)} values, {len(records) // len(counts)} records "
              f"each (from {min(counts.values())} to {max(counts.values())})", file=sys.stderr)
    templates = None
    if format == "prompt-completion" and (prompt_with_input or prompt_no_input):
        templates = load_training_templates(prompt_with_input, prompt_no_input)
    written = export(records, format, output, system=system, split=split, seed=seed, templates=templates,
                     provenance=provenance, chat=chat)
    skipped = f"; skipped {held_out} held out for evaluation (metadata.holdout)" if held_out else ""
    print(f"self_instruct: {len(records)} records as {format} in {', '.join(map(str, written))}{skipped}", file=sys.stderr)


def check_export_outputs(inputs: Sequence[Path], output: Path, format: str, split: float | None) -> None:
    """Before reading anything: refuse an output (or a --split part, or sharegpt's dataset_info.json)
    that is one of the inputs, or that would land on a file a run keeps in an input run directory."""
    parts = [output] if split is None or format == "hf" else [part_path(output, p) for p in ("train", "test")]
    named = [("--output", part) for part in parts]
    if format == "sharegpt":
        named.append(("--output", parts[0].parent / "dataset_info.json"))
    sources = [("INPUT", path / GENERATED if path.is_dir() else path) for path in inputs]
    check_outputs(named if format != "hf" else [], directories=named if format == "hf" else [],
                  inputs=sources)
    for path in (p for p in inputs if p.is_dir()):  # a run's directory: its files are not the export's to write
        for flag, part in named:
            inside = _within(part.resolve(), path.resolve())
            if inside is not None and inside.parts and inside.parts[0] in OUTPUTS:
                raise ConfigError(f"{flag} {part} would overwrite {inside.parts[0]} of the run in {path} "
                                  f"(INPUT); pass another {flag}")


def _within(path: Path, directory: Path) -> Path | None:
    try:
        return path.relative_to(directory)
    except ValueError:
        return None


def cli(argv: Sequence[str] | None = None) -> None:
    run(main, words_as_flag("input", sys.argv[1:] if argv is None else argv, switches=["chat"]),
        name="self_instruct.export")


if __name__ == "__main__":
    cli()
