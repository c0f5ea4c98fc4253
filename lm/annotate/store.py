"""The judgements database (SQLite). Every judgement is one row, written in its own transaction with the
journal in WAL mode and synchronous=FULL: several annotators' requests write concurrently (SQLite serialises the
writers; each waits up to `timeout` for the lock), and a crash loses at most the judgement being written. Every
query is parameterised; nothing here formats values into SQL."""
import datetime
import json
import os
import sqlite3

from lm.data import preferences
from lm.errors import UserError

CHOICES = ("a", "b", "tie")
SCHEMA = """
CREATE TABLE IF NOT EXISTS judgements (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  time TEXT NOT NULL,
  annotator TEXT NOT NULL,
  prompt TEXT NOT NULL,
  answer_a TEXT NOT NULL,
  answer_b TEXT NOT NULL,
  choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie')),
  settings TEXT NOT NULL
)"""


class Store:
  """A judgements database at `path`, created on first use (connections are per call, so any thread may use it)."""

  def __init__(self, path: str, timeout: float = 30.0):
    self.path, self.timeout = path, timeout
    with self._connect() as conn:
      conn.execute("PRAGMA journal_mode=WAL")
      conn.execute(SCHEMA)

  def _connect(self):
    try:
      conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
      conn.execute("PRAGMA synchronous=FULL")
      conn.execute("SELECT name FROM sqlite_master LIMIT 1")
    except sqlite3.DatabaseError as e:
      raise UserError(f"--db={self.path!r} is not a judgements database ({e}); give a new file or one this "
                      "page wrote") from None
    return _Transaction(conn)

  def add(self, annotator: str, prompt: str, answer_a: str, answer_b: str, choice: str, settings: dict) -> int:
    """Store one judgement (one transaction); returns how many this annotator has made."""
    if choice not in CHOICES:
      raise ValueError(f"choice {choice!r} must be one of {CHOICES}")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    with self._connect() as conn:
      conn.execute("BEGIN IMMEDIATE")
      conn.execute("INSERT INTO judgements (time, annotator, prompt, answer_a, answer_b, choice, settings) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (now, annotator, prompt, answer_a, answer_b, choice, json.dumps(settings, sort_keys=True)))
      return conn.execute("SELECT COUNT(*) FROM judgements WHERE annotator = ?", (annotator,)).fetchone()[0]

  def count(self, annotator: str | None = None) -> int:
    with self._connect() as conn:
      if annotator is None:
        return conn.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]
      return conn.execute("SELECT COUNT(*) FROM judgements WHERE annotator = ?", (annotator,)).fetchone()[0]


class _Transaction:
  """`with` a connection: commit on success, roll back on an exception, close either way."""

  def __init__(self, conn):
    self.conn = conn

  def __enter__(self):
    return self.conn

  def __exit__(self, kind, value, tb):
    try:
      if self.conn.in_transaction:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")
    finally:
      self.conn.close()


def export(db_path: str, out_path: str) -> dict:
  """Write the database's judgements as JSONL pairs (ties and identical answers have no preference and are left
  out). The database is opened read-only; the output is written whole or not at all. Returns counts."""
  if not os.path.isfile(db_path):
    raise UserError(f"--db={db_path!r} does not exist; give the database `python -m lm.annotate serve` wrote")
  try:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    with conn:
      rows = conn.execute("SELECT annotator, prompt, answer_a, answer_b, choice FROM judgements ORDER BY id").fetchall()
    conn.close()
  except sqlite3.DatabaseError as e:
    raise UserError(f"--db={db_path!r} is not a judgements database ({e})") from None
  lines, ties, same = [], 0, 0
  for annotator, prompt, a, b, choice in rows:
    if choice == "tie":
      ties += 1
    elif a == b:
      same += 1
    else:
      chosen, rejected = (a, b) if choice == "a" else (b, a)
      lines.append(preferences.to_line(prompt, chosen, rejected, annotator))
  if not lines:
    raise UserError(f"{db_path} holds {len(rows)} judgements ({ties} ties, {same} with identical answers) and no "
                    "preference to export; judge some pairs first (python -m lm.annotate serve); "
                    f"{out_path} not written")
  tmp = f"{out_path}.tmp"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
    os.replace(tmp, out_path)
  except OSError as e:
    raise UserError(f"cannot write {out_path}: {e.strerror}") from None
  return {"pairs": len(lines), "ties": ties, "identical": same}
