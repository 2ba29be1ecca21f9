"""Outputs under an S3 prefix: one ``put_object`` per format, with metadata naming the
source and its fingerprint, so a later run (or a lost state) can tell complete outputs of
this very source from others with one HEAD each, without downloading them."""

from __future__ import annotations

import asyncio
import hashlib
from urllib.parse import quote

from batch.errors import ForeignOutputs, ItemError, OutputError
from batch.formats import CONTENT_TYPES
from batch.naming import folder_prefix, output_relpath
from batch.outputguard import foreign_message
from batch.outputs import Found, OutputMeta, adoptable, landed
from batch.redact import redact_source
from batch.s3 import S3, describe_error, error_code, is_not_found, parse_s3_uri

__all__ = ["META_FINGERPRINT", "META_SOURCE", "S3Sink"]

#: Output metadata keys (S3 lowercases them and prefixes ``x-amz-meta-``).
META_SOURCE = "dgbatch-source"
META_FINGERPRINT = "dgbatch-fingerprint"


#: most bytes of a source recorded as it is: S3 refuses more than 2 KB of metadata in
#: all (400 MetadataTooLarge; keys, the fingerprint and this), and a 1,024-byte key of
#: accented letters percent-encodes to 3 KB; a longer source is recorded by its digest
#: (``sha256:<hex>``). Such a source failed every put before, so no output of an earlier
#: release holds it in full.
SOURCE_META_BYTES = 1800
#: S3 errors about one output object, not the store: that item fails (as a local path too
#: long does) and the run goes on; any other stops the run, every put would meet it
_OBJECT_ERRORS = frozenset({"KeyTooLongError", "MetadataTooLarge", "EntityTooLarge"})
#: keys seen free kept at most (an item stopped before its write leaves its own)
_FREE_MOST = 100_000
#: a key too long (over 1,024 bytes) is the item's own when the prefix leaves room for
#: names: past this, it is the prefix's, which every item would meet, each paid
_PREFIX_ROOM = 512


def _metadata(meta: OutputMeta) -> dict[str, str]:
    """Object metadata must be ASCII: percent-encode what we record."""
    return {META_SOURCE: _source_forms(meta)[0], META_FINGERPRINT: _fingerprint(meta)}


def _fingerprint(meta: OutputMeta) -> str:
    return quote(meta.fingerprint, safe=":")


def _source_forms(meta: OutputMeta) -> tuple[str, ...]:
    """How a source is recorded (first), and how an earlier release may have: in full,
    percent-encoded, whatever its length."""
    source = quote(redact_source(meta.source), safe=":/")
    if len(source) <= SOURCE_META_BYTES:
        return (source,)
    return ("sha256:" + hashlib.sha256(source.encode("ascii")).hexdigest(), source)


class S3Sink:
    """Outputs under an S3 prefix, one ``put_object`` per format, metadata naming the source."""

    def __init__(self, s3: S3, uri: str) -> None:
        bucket, prefix = parse_s3_uri(uri)
        self.s3 = s3
        self.bucket = bucket
        self.prefix = folder_prefix(prefix)
        #: keys ``find_complete`` saw free (absent, or this source's), for that source
        self._free: dict[str, str] = {}

    def describe(self) -> str:
        return self._uri(self.prefix)

    def key_for(self, out_name: str, fmt: str) -> str:
        """The output's key: the prefix plus the item's safe relative name."""
        return self.prefix + output_relpath(out_name, fmt)

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    async def write(self, out_name: str, files: dict[str, bytes], meta: OutputMeta) -> list[str]:
        """Put every format; the item is done only if all of them succeed. Never over an
        object of another source, or not dgbatch's (``--force`` aside)."""
        metadata = _metadata(meta)
        keys = [self.key_for(out_name, fmt) for fmt in files]
        if meta.owner is not None:
            await self._refuse_foreign(keys, meta)
        puts = asyncio.gather(
            *(
                self._put(key, data, CONTENT_TYPES.get(fmt, "application/octet-stream"), metadata)
                for key, (fmt, data) in zip(keys, files.items(), strict=True)
            )
        )
        await landed(puts)
        return [self._uri(key) for key in keys]

    async def _put(self, key: str, data: bytes, content_type: str, meta: dict[str, str]) -> None:
        try:
            await self.s3.call(
                self.s3.client.put_object,
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                Metadata=meta,
            )
        except Exception as exc:
            msg = f"{self._uri(key)}: cannot write output: {describe_error(exc)[1]}"
            if error_code(exc) in _OBJECT_ERRORS and len(self.prefix.encode()) <= _PREFIX_ROOM:
                raise ItemError(msg, code="output_path") from exc
            raise OutputError(msg) from exc

    async def _refuse_foreign(self, keys: list[str], meta: OutputMeta) -> None:
        """HEAD the keys ``find_complete`` did not see free for this source (a format
        rendered later, a kept answer, a ``--dedupe`` copy): one of another source, or
        not dgbatch's, fails the item (its answer, if paid, is kept).

        Raises:
            ForeignOutputs: naming the object and its source.
        """
        unseen = [key for key in keys if self._free.pop(key, None) != meta.source]
        heads = await asyncio.gather(*(self._head(key) for key in unseen))
        sources = _source_forms(meta)
        for key, head in zip(unseen, heads, strict=True):
            if head is not None and head.get(META_SOURCE) not in sources:
                raise ForeignOutputs(foreign_message(self._uri(key), head.get(META_SOURCE) or ""))

    async def find_complete(
        self, out_name: str, formats: tuple[str, ...], meta: OutputMeta, since: float | None
    ) -> Found | None:
        """The outputs when every format exists for this very source and fingerprint (one
        HEAD each, concurrently; nothing is downloaded); only the json when it alone does
        (the rest is rendered from it); else None.

        ``since`` is ignored: the fingerprint in the metadata proves more than a time.
        """
        fingerprint, sources = _fingerprint(meta), _source_forms(meta)
        keys = {fmt: self.key_for(out_name, fmt) for fmt in formats}
        heads = await asyncio.gather(*(self._head(key) for key in keys.values()))
        mine = {
            fmt: key
            for (fmt, key), head in zip(keys.items(), heads, strict=True)
            if head is not None
            and head.get(META_FINGERPRINT) == fingerprint
            and head.get(META_SOURCE) in sources
        }
        found = adoptable(mine, formats)
        if found:
            return Found([self._uri(key) for key in found.values()], None)
        for key, head in zip(keys.values(), heads, strict=True):
            if head is not None and head.get(META_SOURCE) not in sources:
                return Found([], None, foreign=(self._uri(key), head.get(META_SOURCE) or ""))
        if len(self._free) > _FREE_MOST:  # items stopped before their write: forget them
            self._free.clear()
        self._free.update(dict.fromkeys(keys.values(), meta.source))  # seen free: its write
        return None  # need not HEAD them again

    async def read(self, out_name: str, fmt: str) -> bytes | None:
        """An output put earlier, or None when it is not there (``OutputError`` when it
        cannot be read)."""
        key = self.key_for(out_name, fmt)
        try:
            obj = await self.s3.call(self.s3.client.get_object, Bucket=self.bucket, Key=key)
            data: bytes = await self.s3.call(obj["Body"].read)
        except Exception as exc:
            if is_not_found(exc):
                return None
            msg = f"{self._uri(key)}: cannot read output: {describe_error(exc)[1]}"
            raise OutputError(msg) from exc
        return data

    async def _head(self, key: str) -> dict[str, str] | None:
        try:
            head = await self.s3.call(self.s3.client.head_object, Bucket=self.bucket, Key=key)
        except Exception as exc:
            if is_not_found(exc):
                return None
            reason = describe_error(exc)[1]
            msg = f"{self._uri(key)}: cannot check existing outputs: {reason}"
            raise OutputError(msg) from exc
        return head.get("Metadata", {})
