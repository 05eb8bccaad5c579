"""Persistent cache of validated LLM replies (SQLite, safe across threads and processes).

Key: sha256 of the canonical JSON of (model, prompt version, messages, response schema,
temperature, seed). Only replies that passed validation are stored, with the token usage of
the call that produced them, so re-running the same request costs no call.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Self

from services.config import twinarm_home

CACHE_FILE = "cache.sqlite"


def default_cache_dir() -> Path:
    return twinarm_home() / "llm_cache"


def cache_key(
    *,
    model: str,
    prompt_version: str,
    messages: list[tuple[str, str]] | list[list[str]],
    schema: Any,
    temperature: float | None,
    seed: int | None,
) -> str:
    blob = json.dumps(
        {
            "model": model,
            "prompt_version": prompt_version,
            "messages": [list(m) for m in messages],
            "schema": schema,
            "temperature": temperature,
            "seed": seed,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ReplyCache:
    """``get(key)`` / ``put(key, reply, ...)`` on ``<directory>/cache.sqlite``."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / CACHE_FILE
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(self.path), timeout=30, check_same_thread=False, isolation_level=None
        )
        with self._lock:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError:
                pass
            self._conn.execute(
                """CREATE TABLE IF NOT EXISTS replies (
                       key TEXT PRIMARY KEY,
                       reply TEXT NOT NULL,
                       model TEXT,
                       prompt_version TEXT,
                       input_tokens INTEGER,
                       output_tokens INTEGER,
                       created REAL
                   )"""
            )

    def get(self, key: str) -> dict[str, Any] | None:
        """``{"reply": dict, "input_tokens": int, "output_tokens": int}`` or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT reply, input_tokens, output_tokens FROM replies WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        try:
            reply = json.loads(row[0])
        except json.JSONDecodeError:
            return None
        return {"reply": reply, "input_tokens": row[1] or 0, "output_tokens": row[2] or 0}

    def put(
        self,
        key: str,
        reply: dict[str, Any],
        *,
        model: str = "",
        prompt_version: str = "",
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        text = json.dumps(reply, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, text, model, prompt_version, input_tokens, output_tokens, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def clear(self) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM replies")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
