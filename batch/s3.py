"""S3 in: send objects to Deepgram (listing them: ``s3sources``; outputs: ``s3sink``;
lock: ``s3lock``).

boto3 is synchronous, so every call runs in this module's own thread pool (sized to
the run's concurrency, so a slow S3 never starves the default executor) and the event
loop never blocks. Listing is the exception: the planner already runs in a thread and
pulls items from ``s3sources.expand`` one page at a time.

botocore errors are translated here and only here, by :func:`describe_error`, into
the reason shown to the user; callers wrap it in the error type their stage needs
(``SourceError`` while planning, ``ItemError`` while sending, ``OutputError`` while
writing). Presigned URLs never leave this module except as the body of a Deepgram
request: nothing logs, stores or reports them (``redact`` would scrub the signature
anyway).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from batch.client import CHUNK_SIZE, Answer, DeepgramClient, TransportError
from batch.errors import ItemError, SourceError, StoreUnreachable
from batch.media import Sender, check_size
from batch.naming import content_type_for, is_s3_uri, split_s3_uri
from batch.records import WorkItem
from batch.redact import redact_source

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "PRESIGN_EXPIRY",
    "S3",
    "URL_MODES",
    "S3Options",
    "describe_error",
    "is_not_found",
    "parse_s3_uri",
]

log = logging.getLogger("dgbatch")
T = TypeVar("T")

#: Seconds a presigned URL stays valid. It is minted again at every attempt, so it
#: only has to outlive one request: Deepgram's fetch plus its 10-20 min processing.
PRESIGN_EXPIRY = 3600
#: How an S3 item reaches Deepgram: a presigned GET URL, or streamed through us.
URL_MODES = ("presign", "upload")

# Most specific first: the first row whose codes include the error's code gives the
# reason. ``404`` is what HEAD answers for both a missing key and a missing bucket.
_CLIENT_ERRORS: tuple[tuple[frozenset[str], str, str], ...] = (
    (frozenset({"NoSuchBucket"}), "no_bucket", "no such bucket"),
    (frozenset({"NoSuchKey", "404", "NotFound"}), "missing", "no such key"),
    (frozenset({"PreconditionFailed", "412"}), "changed", "object changed since it was listed"),
    (
        frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}),
        "credentials",
        "S3 refused the AWS credentials",
    ),
    (
        frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}),
        "access_denied",
        "access denied",
    ),
    (frozenset({"InvalidBucketName"}), "bad_bucket", "invalid bucket name"),
    (frozenset({"SlowDown", "503", "ServiceUnavailable"}), "throttled", "S3 is throttling"),
)


@dataclass(frozen=True, slots=True)
class S3Options:
    """How to reach S3; the credentials come from boto3's standard chain."""

    #: an S3-compatible store or moto (forces path-style addressing); None = AWS
    endpoint_url: str | None = None
    #: threads running boto3 calls (and HTTP connections in botocore's pool)
    threads: int = 16
    #: keys per ``list_objects_v2`` page (S3's maximum is 1000)
    page_size: int = 1000
    presign_expiry: int = PRESIGN_EXPIRY


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; the key is taken literally.

    Raises:
        SourceError: not ``s3://`` or no bucket.
    """
    if not is_s3_uri(uri):
        raise SourceError(f"{redact_source(uri)}: not an s3:// URI")
    bucket, key = split_s3_uri(uri)
    if not bucket:
        raise SourceError(f"{redact_source(uri)}: no bucket (expected s3://BUCKET/KEY)")
    return bucket, key


def describe_error(exc: BaseException) -> tuple[str, str]:
    """Turn a botocore (or connection) error into ``(code, reason)`` for a message."""
    from botocore import exceptions as bce

    if isinstance(exc, bce.ClientError):
        return _client_error(exc)
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return "credentials", "no AWS credentials (set AWS_PROFILE or AWS_ACCESS_KEY_ID/...)"
    if isinstance(exc, bce.ParamValidationError):
        return "bad_request", f"invalid S3 request: {str(exc).splitlines()[-1].strip()}"
    if isinstance(exc, bce.EndpointConnectionError | bce.ConnectionError | OSError):
        return "unreachable", f"cannot reach S3 ({type(exc).__name__})"
    if isinstance(exc, bce.BotoCoreError):
        return "s3_error", f"S3 client error: {exc}"
    return "s3_error", f"{type(exc).__name__}: {exc}"


def _client_error(exc: Any) -> tuple[str, str]:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    for codes, short, reason in _CLIENT_ERRORS:
        if code in codes or (not code and status in codes):
            return short, reason
    message = error.get("Message") or "no message"
    return "s3_error", f"S3 answered {code or status}: {message}"


def error_code(exc: BaseException) -> str:
    """The code of an error S3 answered (``KeyTooLongError``), or ``""``."""
    return str(_answered(exc, "Error", "Code") or "")


def _answered(exc: BaseException, section: str, name: str) -> object:
    """``exc.response[section][name]``: a field of what S3 answered, or None."""
    response = getattr(exc, "response", None)
    part = response.get(section) if isinstance(response, dict) else None
    return part.get(name) if isinstance(part, dict) else None


def is_not_found(exc: BaseException) -> bool:
    """Tell a missing key or bucket from every other S3 error."""
    return describe_error(exc)[0] in ("missing", "no_bucket")


class S3:
    """One boto3 client and the threads that run its calls, shared by a whole run."""

    def __init__(self, options: S3Options | None = None) -> None:
        self.options = options or S3Options()
        self._client: S3Client | None = None
        self._client_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=self.options.threads, thread_name_prefix="dgbatch-s3"
        )

    @property
    def client(self) -> S3Client:
        """The boto3 client, made on first use (importing boto3 costs a few 100 ms)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> S3Client:
        import boto3
        from botocore.config import Config

        s3_config: dict[str, Any] = {}
        if self.options.endpoint_url:
            s3_config["addressing_style"] = "path"
        config = Config(
            signature_version="s3v4",
            s3=s3_config,  # type: ignore[arg-type]
            max_pool_connections=self.options.threads,
            retries={"mode": "standard"},
        )
        return boto3.client("s3", endpoint_url=self.options.endpoint_url, config=config)

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run one blocking call in the S3 threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Stop the threads once every call has returned."""
        self._pool.shutdown(wait=True)

    def read_range(
        self, bucket: str, key: str, byte_range: str, limit: int
    ) -> tuple[bytes, str | None]:
        """At most ``limit`` bytes of one ranged GET (blocking: ``call`` it from the event
        loop), and its ``Content-Range``; botocore's errors as they come."""
        answer = self.client.get_object(Bucket=bucket, Key=key, Range=byte_range)
        body = answer["Body"]
        try:
            return bytes(body.read(limit)), answer.get("ContentRange")
        finally:
            body.close()

    # -- sending ---------------------------------------------------------------------------

    def sender(self, mode: str) -> Sender:
        """The sender of S3 items for ``--url-mode``."""
        return self.send_presigned if mode == "presign" else self.send_upload

    async def send_presigned(self, client: DeepgramClient, item: WorkItem, source: str) -> Answer:
        """Mint a presigned GET URL now (each attempt gets a fresh one) and submit it.

        The object is first checked against the ETag it was listed with (a HEAD with
        ``If-Match``): overwritten since, possibly hours ago on a long night, it would be
        transcribed from its new bytes and recorded under the old ETag, and sent again the
        next night. It fails as ``changed`` instead, as in upload mode, and the next run
        plans it again. (Deepgram fetches it a moment later: a narrow window is left.)"""
        bucket, key = _object_of(item, source)
        if item.fingerprint:
            await self._check_unchanged(bucket, key, item.fingerprint, source)
        url = await self.call(
            self.client.generate_presigned_url,
            "get_object",
            Params={"Bucket": bucket, "Key": key},
            ExpiresIn=self.options.presign_expiry,
        )
        return await client.send_url(url, item.params)

    async def _check_unchanged(self, bucket: str, key: str, etag: str, source: str) -> None:
        """Fail an object overwritten (412) or deleted (404) since it was listed; any other
        answer (a bucket that lets only the presigned URL read it: 403, a store without
        conditional HEADs) leaves the check to Deepgram's fetch, as before it existed."""
        try:
            await self.call(self.client.head_object, Bucket=bucket, Key=key, IfMatch=f'"{etag}"')
        except Exception as exc:
            if describe_error(exc)[0] in ("changed", "missing"):
                raise _item_error(source, exc) from exc
            log.debug("%s: not checked against its ETag: %s", redact_source(source), exc)

    async def send_upload(self, client: DeepgramClient, item: WorkItem, source: str) -> Answer:
        """Stream the object from S3 to Deepgram, never more than a chunk in memory."""
        bucket, key = _object_of(item, source)
        extra = {"IfMatch": f'"{item.fingerprint}"'} if item.fingerprint else {}
        try:
            obj = await self.call(self.client.get_object, Bucket=bucket, Key=key, **extra)
        except Exception as exc:
            raise read_error(source, exc) from exc
        body = obj["Body"]
        try:
            check_size(redact_source(source), obj["ContentLength"], "object")
            chunks = self._chunks(body, source)
            return await client.send_stream(
                chunks, obj["ContentLength"], content_type_for(key), item.params
            )
        finally:
            body.close()

    async def _chunks(self, body: Any, source: str) -> AsyncIterator[bytes]:
        """Read the body in the S3 threads; a broken read is a connection error (retried)."""
        while True:
            try:
                chunk: bytes = await self.call(body.read, CHUNK_SIZE)
            except Exception as exc:
                msg = f"{redact_source(source)}: reading from S3 failed: {describe_error(exc)[1]}"
                raise ConnectionError(msg) from exc
            if not chunk:
                return
            yield chunk


def _object_of(item: WorkItem, source: str) -> tuple[str, str]:
    """The item's bucket and key; an empty object, or one over 2 GB, fails before
    anything is sent (as a local file does), in either ``--url-mode``."""
    try:
        bucket, key = parse_s3_uri(source)
    except SourceError as exc:
        raise ItemError(str(exc), code="bad_source") from None
    if item.size is not None:
        check_size(redact_source(source), item.size, "object")
    return bucket, key


def read_error(source: str, exc: BaseException) -> Exception:
    """What reading an object's audio failed with, once botocore's own retries are spent:
    S3 down stops the run (items stay pending), throttling or a 5xx is retried with the
    item's backoff (nothing reached Deepgram), anything else fails the item."""
    from botocore.exceptions import HTTPClientError

    code, reason = describe_error(exc)
    message = f"{redact_source(source)}: {reason}"
    if code == "unreachable" and not isinstance(exc, HTTPClientError):  # refused, DNS
        return StoreUnreachable(
            f"{message}; stopped so that unfinished items stay pending: check the network "
            "or the S3 endpoint, then run the same command"
        )
    if code == "throttled" or _status_of(exc) >= 500 or isinstance(exc, HTTPClientError):
        return TransportError(message, body_sent=False, timeout=False, reached=False)
    return _item_error(source, exc)


def _status_of(exc: BaseException) -> int:
    status = _answered(exc, "ResponseMetadata", "HTTPStatusCode")
    return status if isinstance(status, int) else 0


def _item_error(source: str, exc: BaseException) -> ItemError:
    code, reason = describe_error(exc)
    if code == "changed":
        reason += "; run again to re-plan it"
    return ItemError(f"{redact_source(source)}: {reason}", code=code)
