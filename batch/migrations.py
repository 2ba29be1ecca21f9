"""Numbered schema migrations for the state file; applied names are recorded in a table.

Adding a schema change means adding one function: an old state file upgrades itself
on open, and a newer one is refused rather than misread.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sqlite3
from collections.abc import Callable

from batch.errors import UsageError
from batch.params import merge_params, parse_param
from batch.pricing import price_params
from batch.redact import redact_source, redact_text
from batch.urls import url_id

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration, in definition order."""
    MIGRATIONS.append(fn)
    return fn


#: pending items by the run that last listed them: made by m019, then on demand by
#: ``State.hold_unlisted`` for a run that starts with pending rows
LISTED_INDEX = (
    "CREATE INDEX IF NOT EXISTS items_listed ON items (seen_run) WHERE status = 'pending'"
)


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    """Items, runs and a key/value table that marks the file as a dgbatch state file."""
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE items (
            id TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            out_stem TEXT NOT NULL,
            out_full TEXT NOT NULL,
            out_name TEXT,
            params TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            http_status INTEGER,
            error TEXT,
            err_code TEXT,
            request_id TEXT,
            duration REAL,
            outputs TEXT,
            size INTEGER,
            fingerprint TEXT NOT NULL DEFAULT '',
            timeout_retries INTEGER NOT NULL DEFAULT 0,
            claimed_at REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            run_id INTEGER
        );
        CREATE INDEX items_status ON items (status);
        CREATE INDEX items_out_stem ON items (out_stem);
        CREATE INDEX items_out_name ON items (out_name);
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            started_at REAL NOT NULL,
            finished_at REAL,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            command TEXT NOT NULL,
            exit_code INTEGER,
            summary TEXT
        );
        """
    )


@migration
def m002_warnings_copies_run_tags(db: sqlite3.Connection) -> None:
    """Per-item ``warning`` (empty or truncated transcript), ``copy_of`` (--dedupe) and the
    locally measured ``local_duration``; per-run ``tag`` for usage reconciliation."""
    add_column(db, "items", "warning TEXT")
    add_column(db, "items", "copy_of TEXT")
    add_column(db, "items", "local_duration REAL")
    add_column(db, "runs", "tag TEXT")


@migration
def m003_forced(db: sqlite3.Connection) -> None:
    """Per-item ``forced``: a ``--force`` re-queued it, so outputs already in S3 are the
    ones being redone, never to be adopted as its own."""
    add_column(db, "items", "forced INTEGER NOT NULL DEFAULT 0")


@migration
def m004_seen_run(db: sqlite3.Connection) -> None:
    """Per-item ``seen_run``: the last run whose sources listed it (a new item has its
    planning run in ``run_id``). A run's exit code counts only its own items, so a failed
    item whose source is gone no longer fails every later run."""
    add_column(db, "items", "seen_run INTEGER")


@migration
def m005_kept_answers(db: sqlite3.Connection) -> None:
    """Paid answers whose outputs could not be written (``batch.keeping``), by item, with
    the source, params and fingerprint they answer and the run that paid for them: the
    next run writes them instead of paying again."""
    db.execute(
        "CREATE TABLE kept_answers (id TEXT PRIMARY KEY, source TEXT NOT NULL, "
        "params TEXT NOT NULL, fingerprint TEXT NOT NULL, run_id INTEGER NOT NULL, "
        "body BLOB NOT NULL, kept_at REAL NOT NULL)"
    )


@migration
def m006_kept_copy_of(db: sqlite3.Connection) -> None:
    """Per kept answer, ``copy_of``: a --dedupe copy keeps its original's answer, and the
    run that writes it records it as that copy again (not as a request of its own).

    Answers kept before are told apart by their Deepgram request id, read once from each
    body: one whose request an item of its own holds (done with it) was a copy of that
    item; of answers kept for one request alone, the first planned is the original."""
    add_column(db, "kept_answers", "copy_of TEXT")
    kept: dict[str, list[str]] = {}  # request id → its kept answers' items, in plan order
    rows = db.execute(
        "SELECT kept_answers.id, body FROM kept_answers JOIN items USING (id) ORDER BY items.rowid"
    )
    for item_id, body in rows:
        request_id = _request_id(bytes(body))
        if request_id is not None:
            kept.setdefault(request_id, []).append(item_id)
    if not kept:
        return
    db.execute("CREATE TEMP TABLE kept_requests (request_id TEXT PRIMARY KEY)")
    db.executemany("INSERT INTO kept_requests VALUES (?)", [(r,) for r in kept])
    holders: dict[str, str] = {}
    for item_id, request_id in db.execute(  # one pass over the items
        "SELECT id, request_id FROM items WHERE copy_of IS NULL AND request_id IN "
        "(SELECT request_id FROM kept_requests) ORDER BY rowid DESC"
    ):
        holders[request_id] = item_id  # the first planned wins
    db.execute("DROP TABLE kept_requests")
    for request_id, items in kept.items():
        original = holders.get(request_id) or items[0]
        db.executemany(
            "UPDATE kept_answers SET copy_of = ? WHERE id = ?",
            [(original, item_id) for item_id in items if item_id != original],
        )


@migration
def m007_url_ids_redacted_again(db: sqlite3.Connection) -> None:
    """A URL item is keyed by its URL as redacted, and redaction now reaches further
    (``x-api-key``, ``jwt``, ``;`` between pairs, a presigned URL inside a query value):
    such ids and sources are redacted again, as the planner now keys them. Otherwise an
    upgrade mid-batch planned those items anew and sent its done ones again.

    Redaction only ever grows, so redacting an id that is already redacted gives what
    redacting the URL gives. Two ids that become one keep the first (the later one is
    planned anew, as a clash)."""
    _rekey_url_items(db)


def _rekey_url_items(db: sqlite3.Connection) -> None:
    """Redact every URL item's id and source again, as the planner now keys them, and
    follow the ids that changed in ``copy_of`` and ``kept_answers``."""

    rows = db.execute(  # a done row first: two ids that become one keep the done one
        "SELECT rowid, id, source FROM items WHERE kind = 'url' AND id LIKE '%://%' "
        "AND id NOT LIKE 'id:%' AND id NOT LIKE 'clash:%' ORDER BY status != 'done', rowid"
    ).fetchall()
    db.execute("CREATE TEMP TABLE rekeyed (old TEXT PRIMARY KEY, new TEXT NOT NULL)")
    for rowid, old_id, source in rows:
        new_id, new_source = url_id(old_id), redact_source(source)
        if (new_id, new_source) == (old_id, source):
            continue
        update = "UPDATE OR IGNORE items SET id = ?, source = ? WHERE rowid = ?"
        if db.execute(update, (new_id, new_source, rowid)).rowcount and new_id != old_id:
            db.execute("INSERT INTO rekeyed VALUES (?, ?)", (old_id, new_id))
    _follow_rekeyed(db)
    _redact_kept_sources(db)


def _redact_kept_sources(db: sqlite3.Connection) -> None:
    """Redact kept answers' sources again: each is compared with its item's, to be written."""
    for kept_id, source in db.execute("SELECT id, source FROM kept_answers").fetchall():
        redacted = redact_source(source)
        if redacted != source:
            db.execute("UPDATE kept_answers SET source = ? WHERE id = ?", (redacted, kept_id))


@migration
def m008_retry_next(db: sqlite3.Connection) -> None:
    """Per item, ``retry_next``: it gave up on a 429 or a 5xx (Deepgram busy or down),
    which the next run sends again without ``--retry-failed``: a nightly job whose run
    met an outage would otherwise never send those items again."""
    add_column(db, "items", "retry_next INTEGER NOT NULL DEFAULT 0")


@migration
def m009_paid_200s(db: sqlite3.Connection) -> None:
    """Per item, ``paid_200s``: the 200s without a transcript it got (each one billed) since
    it was last queued. A 200 like that is tried once more at most, and a stop between the
    two made the next run forget the first: three paid answers for one recording. And
    ``queued_at``, for the output guard (``batch.records.Ownership``)."""
    add_column(db, "items", "paid_200s INTEGER NOT NULL DEFAULT 0")
    # when the plan last queued the item (NULL: when it was created); files at its output
    # places written after both that and an earlier claim of it are a crashed attempt's
    add_column(db, "items", "queued_at REAL")
    # a 504 ("processing exceeded the maximum time") is no longer sent again by the next
    # run: one an earlier release marked so would be, once
    db.execute("UPDATE items SET retry_next = 0 WHERE http_status = 504")


@migration
def m010_sent_params(db: sqlite3.Connection) -> None:
    """Per item, ``sent_params``: its own params when it was last sent (claimed), so that
    a done item whose manifest line was edited since is told apart (it is not sent
    again; the run says so)."""
    add_column(db, "items", "sent_params TEXT")
    # what a done item was sent with is best known as what its line asked for until now:
    # a line edited after the upgrade is then told apart, as on a new state
    db.execute("UPDATE items SET sent_params = params WHERE status = 'done'")


@migration
def m011_url_ids_signed_again(db: sqlite3.Connection) -> None:
    """More signing schemes are told apart from the recording they sign: Alibaba OSS,
    Tencent COS, Cloudflare (``verify``) and Akamai (``hdnts``, ``hmac``) signatures are
    secrets now (they were stored as they came), and an Azure user-delegation key's
    times, OSS and COS signing times and a generic ``exp``/``expiry`` change with every
    signing. URL items are keyed again, as m007 did, so that an upgrade does not plan
    them anew (once more) and pay."""
    _rekey_url_items(db)


@migration
def m012_named_url_sources_redacted_again(db: sqlite3.Connection) -> None:
    """The sources of URL items keyed by a manifest ``id`` are redacted again as well (m011
    redacted those keyed by their URL): their new secrets were left in clear, and the
    plan, which compares a stored URL with the one it redacts now, took each for another
    recording and sent it again. And a done item without ``sent_params`` (a state m010
    met before it set them) takes its params as those it was sent with."""

    _redact_named_url_sources(db)
    db.execute(
        "UPDATE items SET sent_params = params WHERE status = 'done' AND sent_params IS NULL"
    )


def _redact_named_url_sources(db: sqlite3.Connection, *others: str) -> None:
    """Redact again the sources of URL items keyed by a manifest ``id`` (and of those whose
    id is like one of ``others``)."""
    where = " OR ".join(["id LIKE ?"] * (1 + len(others)))
    rows = db.execute(
        f"SELECT rowid, source FROM items WHERE kind = 'url' AND ({where})", ("id:%", *others)
    )
    for rowid, source in rows.fetchall():
        redacted = redact_source(source)
        if redacted != source:
            db.execute("UPDATE items SET source = ? WHERE rowid = ?", (redacted, rowid))


@migration
def m013_url_ids_from_their_sources(db: sqlite3.Connection) -> None:
    """Every URL item keyed by its URL is keyed as the planner keys it now, from its
    stored source (``url_id`` of it), not from its old id: a key that stopped being a
    signing time (a generic ``exp``) comes back, and a row an earlier m011 left with its
    old id (it lost the shared id to a failed row) loses its secrets too.

    When two rows want one id, the done one takes it; a row that is not done and holds it
    without a kept answer is the same recording, and goes; otherwise the later row keeps
    the id with ``#<rowid>`` after it, without its secrets."""
    _key_url_items_from_sources(db)


def _key_url_items_from_sources(db: sqlite3.Connection) -> None:
    """m013's keying: each URL item keyed by its URL takes ``url_id`` of its source."""
    rows = db.execute(
        "SELECT rowid, id, source, status FROM items WHERE kind = 'url' AND id LIKE '%://%' "
        "AND id NOT LIKE 'id:%' AND id NOT LIKE 'clash:%' ORDER BY status != 'done', rowid"
    ).fetchall()
    db.execute("CREATE TEMP TABLE rekeyed (old TEXT PRIMARY KEY, new TEXT NOT NULL)")
    for rowid, old_id, source, status in rows:
        new_source = redact_source(source)
        new_id = _free_id(db, url_id(new_source), rowid, status == "done")
        if new_id is None or (new_id, new_source) == (old_id, source):
            continue
        db.execute(
            "UPDATE items SET id = ?, source = ? WHERE rowid = ?", (new_id, new_source, rowid)
        )
        if new_id != old_id:
            db.execute("INSERT OR REPLACE INTO rekeyed VALUES (?, ?)", (old_id, new_id))
    _follow_rekeyed(db)


def _free_id(db: sqlite3.Connection, wanted: str, rowid: int, done: bool) -> str | None:
    """The id row ``rowid`` takes (None: the row is gone, taken by a done one before)."""
    if db.execute("SELECT 1 FROM items WHERE rowid = ?", (rowid,)).fetchone() is None:
        return None
    holder = db.execute("SELECT rowid, status FROM items WHERE id = ?", (wanted,)).fetchone()
    if holder is None or holder[0] == rowid:
        return wanted
    kept = db.execute("SELECT 1 FROM kept_answers WHERE id = ?", (wanted,)).fetchone()
    if done and holder[1] != "done" and kept is None:
        db.execute("DELETE FROM items WHERE rowid = ?", (holder[0],))
        return wanted
    return f"{wanted}#{rowid}"


def _follow_rekeyed(db: sqlite3.Connection) -> None:
    """Point ``copy_of`` and kept answers at the ids that changed (``rekeyed``)."""
    for table in ("items", "kept_answers"):
        db.execute(
            f"UPDATE {table} SET copy_of = rekeyed.new FROM rekeyed "
            f"WHERE {table}.copy_of = rekeyed.old"
        )
    db.execute(
        "UPDATE OR IGNORE kept_answers SET id = rekeyed.new FROM rekeyed "
        "WHERE kept_answers.id = rekeyed.old"
    )
    db.execute("DROP TABLE rekeyed")


def _request_id(body: bytes) -> str | None:
    """A kept answer's Deepgram request id (a BOM allowed, as when it was parsed)."""
    try:
        metadata = json.loads(body).get("metadata")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    request_id = metadata.get("request_id") if isinstance(metadata, dict) else None
    return request_id if isinstance(request_id, str) else None


@migration
def m014_content_keys(db: sqlite3.Connection) -> None:
    """``--dedupe`` keys of items sent and done (a sha256 of the key: params may hold a
    secret), with the fingerprint their file had and the request that answered them: a
    copy listed in a later run is written from that item's json, while it holds that
    answer, instead of being paid for again."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS content_keys (key TEXT PRIMARY KEY, item_id TEXT NOT NULL, "
        "fingerprint TEXT NOT NULL, request_id TEXT NOT NULL)"
    )


@migration
def m015_billed_before(db: sqlite3.Connection) -> None:
    """Per item, ``billed_before``: seconds of audio Deepgram billed for it before it was
    queued again (``--retry-failed``, ``--force``, a changed source), which a re-queue's
    reset of its counts dropped from the budget: 200s without a transcript, a done
    item's transcript."""
    add_column(db, "items", "billed_before REAL NOT NULL DEFAULT 0")


@migration
def m016_content_keys_request_id(db: sqlite3.Connection) -> None:
    """``content_keys.request_id`` in a table an earlier m014 made without it: its rows
    (of no known answer) then match no item, and their copies are sent once more."""
    add_column(db, "content_keys", "request_id TEXT NOT NULL DEFAULT ''")


@migration
def m017_run_priced_params(db: sqlite3.Connection) -> None:
    """Per run, ``priced``: its ``model`` and ``language`` params (JSON pairs; nothing
    else of ``--param``, which may hold a secret), so a budget prices what an earlier run
    sent at the model it sent it with, not at today's ``--param model``. Runs recorded
    before are read from their command line (``--param model=…`` over the defaults)."""
    add_column(db, "runs", "priced TEXT")
    for run_id, command in db.execute("SELECT id, command FROM runs WHERE priced IS NULL"):
        priced = _priced_of_command(str(command or ""))
        db.execute("UPDATE runs SET priced = ? WHERE id = ?", (json.dumps(priced), run_id))


#: the defaults of the runs this migration prices: frozen, as a later change of
#: ``params.DEFAULT_PARAMS`` would re-price runs that did not use it
_DEFAULTS_BEFORE_M017 = (("model", "nova-3"), ("smart_format", "true"))


def _priced_of_command(command: str) -> list[tuple[str, str]]:
    """The model and language a recorded command line asked for (the defaults' model
    where it named none); a command that cannot be read gives the defaults."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = []
    given = []
    for before, word in zip(["", *words], words, strict=False):
        text = word.removeprefix("--param=") if word.startswith("--param=") else word
        if before == "--param" or word.startswith("--param="):
            with contextlib.suppress(UsageError):  # the run took it: read as it was
                given.append(parse_param(text))
    return list(price_params(merge_params(_DEFAULTS_BEFORE_M017, tuple(given))))


@migration
def m018_billed_run(db: sqlite3.Connection) -> None:
    """Per item, ``billed_run``: the run that sent what ``billed_before`` holds, which
    prices it (the item's ``run_id`` moves to every run that claims it, one that the budget
    stops before it sends included)."""
    add_column(db, "items", "billed_run INTEGER")


@migration
def m019_listed_pending(db: sqlite3.Connection) -> None:
    """Pending items by the run that last listed them (``LISTED_INDEX``): while a resumed
    run's plan still grows, it sends only what it listed again (an earlier run's pending
    row would go with the params its line no longer has), without scanning the rest at
    each claim. Made on demand since m020."""
    db.execute(LISTED_INDEX)


@migration
def m020_listed_on_demand(db: sqlite3.Connection) -> None:
    """m019's index costs every planned row ~0.4 µs, and only a run that starts with
    pending rows needs it: ``State.hold_unlisted`` makes it then."""
    db.execute("DROP INDEX IF EXISTS items_listed")


@migration
def m021_url_ids_signed_by_md5_and_sign(db: sqlite3.Connection) -> None:
    """nginx's ``secure_link`` (``md5``) and Tencent CDN's ``sign`` are secrets now: they
    were stored, reported and shown, and a URL signed again was another item, paid
    again. URL items are keyed and their sources redacted again (m013, m012; clash rows
    too), as are errors quoting them, kept answers' sources and recorded commands, so an
    upgrade plans none anew and keeps none in clear."""
    _key_url_items_from_sources(db)
    _redact_named_url_sources(db, "clash:%")
    _redact_clash_ids(db)
    errors = db.execute("SELECT rowid, error FROM items WHERE error IS NOT NULL").fetchall()
    for rowid, error in errors:
        redacted = redact_text(error)
        if redacted != error:
            db.execute("UPDATE items SET error = ? WHERE rowid = ?", (redacted, rowid))
    _redact_kept_sources(db)
    for run_id, command in db.execute("SELECT id, command FROM runs").fetchall():
        redacted = redact_text(command)
        if redacted != command:
            db.execute("UPDATE runs SET command = ? WHERE id = ?", (redacted, run_id))


def _redact_clash_ids(db: sqlite3.Connection) -> None:
    """A clash row's id and name quote the id of the item it clashed with: redacted again
    (``#<rowid>`` after one that another clash row now has)."""
    rows = db.execute("SELECT rowid, id FROM items WHERE id LIKE 'clash:%'").fetchall()
    for rowid, old in rows:
        new = redact_text(old)
        if new == old:
            continue
        taken = db.execute("SELECT 1 FROM items WHERE id = ?", (new,)).fetchone()
        new = f"{new}#{rowid}" if taken else new
        db.execute("UPDATE items SET id = ?, name = ? WHERE rowid = ?", (new, new, rowid))


def add_column(db: sqlite3.Connection, table: str, column: str) -> None:
    """``ALTER TABLE table ADD COLUMN column`` unless the column is there: SQLite commits
    it at once, outside the migration's transaction, so a migration cut short after it (a
    full disk) runs again on the next open and must not fail on its own column."""
    name = column.split()[0]
    if name not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply every migration not yet recorded; return the names applied now."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    applied = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        fn(db)
        db.execute(
            "INSERT INTO _migrations (name, applied_at) VALUES (?, datetime('now'))",
            (fn.__name__,),
        )
        applied.append(fn.__name__)
    return applied


def unknown_migrations(db: sqlite3.Connection) -> set[str]:
    """Migrations recorded in the file that this version does not know (a newer dgbatch)."""
    known = {fn.__name__ for fn in MIGRATIONS}
    return {row[0] for row in db.execute("SELECT name FROM _migrations")} - known
