"""The send-time guards around each sender of a run: what is checked just before a
request goes out (the output lock, an output's place) and the params it goes with."""

from __future__ import annotations

from pathlib import Path

from batch.client import Answer, DeepgramClient
from batch.config import RunConfig
from batch.errors import ItemError
from batch.media import SENDERS, Sender, send_sniffed_file
from batch.models import ItemKind, Params
from batch.naming import is_s3_uri, output_place_problem, output_root
from batch.outputguard import Inputs, OutputPlaces, check_spares_source
from batch.params import request_params
from batch.records import WorkItem
from batch.s3 import S3
from batch.s3lock import LockWatch

__all__ = ["make_senders"]


def make_senders(
    config: RunConfig,
    tags: Params,
    s3: S3,
    inputs: Inputs,
    watch: LockWatch,
) -> dict[ItemKind, Sender]:
    """The senders of this run: local files sniffed unless ``--no-sniff``, S3 objects in
    the chosen ``--url-mode``, and every request's params completed by ``request_params``
    (defaults, captions, run tags). Each request first asks the output lock's ``watch``
    (``LockWatch.check``); a local ``--out`` nothing can be written into
    (``LockWatch.unwritable``) stops the run before its first request."""
    senders = {**SENDERS, ItemKind.S3: s3.sender(config.url_mode)}
    if config.sniff:
        senders[ItemKind.FILE] = send_sniffed_file
    if not is_s3_uri(config.out):
        places = OutputPlaces(config.out, inputs, watch.unwritable)
        senders = {kind: _sparing(sender, config, places) for kind, sender in senders.items()}
    senders = {kind: _placeable(sender, config) for kind, sender in senders.items()}
    return {kind: _completing(sender, config, tags, watch) for kind, sender in senders.items()}


def _sparing(sender: Sender, config: RunConfig, places: OutputPlaces) -> Sender:
    """Refuse, unsent, an item whose outputs would replace a file this batch did not
    write (``OutputPlaces.check_free``), or a file whose own output would replace it: a
    recording named ``rec.json`` transcribed into its own folder was overwritten by its
    transcript. Nothing is paid for an answer with no place to go."""
    root = Path(config.out)

    async def send(client: DeepgramClient, item: WorkItem, source: str) -> Answer:
        if item.kind is ItemKind.FILE:
            check_spares_source(root, item.out_name, config.formats, source)
        places.check_free(item.out_name, config.formats, item.owner)
        return await sender(client, item, source)

    return send


def _placeable(sender: Sender, config: RunConfig) -> Sender:
    """Refuse, unsent, an item whose outputs could never be written, in a local or an S3
    ``--out`` (``output_place_problem``: a path or key too long)."""
    root = output_root(config.out)

    async def send(client: DeepgramClient, item: WorkItem, source: str) -> Answer:
        problem = output_place_problem(root, item.out_name, config.formats)
        if problem is not None:
            raise ItemError(problem, code="output_path")
        return await sender(client, item, source)

    return send


def _completing(sender: Sender, config: RunConfig, tags: Params, watch: LockWatch) -> Sender:
    """Merge the run's layers over the item's own params (stored as the manifest gave
    them) at send time, so a resumed run sends with the current command's options; no
    request once the output lock may be lost (``LockWatch.check``)."""

    async def send(client: DeepgramClient, item: WorkItem, source: str) -> Answer:
        watch.check()
        params = request_params(config.params, item.params, formats=config.formats, tags=tags)
        return await sender(client, item.with_params(params), source)

    return send
