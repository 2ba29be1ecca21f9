"""The paragraph a run ends with, on stderr: what it did, what is left, where to look."""

from __future__ import annotations

from typing import TYPE_CHECKING

from batch.terminal import shown

if TYPE_CHECKING:
    from batch.job import RunOutcome


def format_summary(outcome: RunOutcome) -> str:
    """One paragraph: what happened, how long it took, where the report is."""
    s, c = outcome.stats, outcome.counts
    lines = [
        f"done {s.done}, failed {s.failed}, retried {s.retries}, "
        f"possibly billed {s.timeout_retries}, audio {s.audio_seconds / 3600:.2f} h, "
        f"wall {outcome.wall_seconds:.1f} s",
        f"state: {c['done']} done, {c['failed']} failed, {c['pending'] + c['running']} pending",
    ]
    earlier = (
        c["failed"] - outcome.unlisted_failed if outcome.exit_code == 1 and not s.failed else 0
    )
    counted = [
        (
            earlier,
            "{} item(s) of this run's sources failed in earlier runs, so the exit code is 1 "
            "(dgbatch report --failed lists them; --retry-failed sends them again)",
        ),
        (
            outcome.unlisted_failed,
            "{} failed item(s) of earlier runs are not among this run's sources (not given "
            "this time, deleted, or a manifest line since fixed): they do not count in the exit "
            "code (dgbatch report --failed lists them)",
        ),
        (s.warnings, "{} item(s) with a warning (dgbatch report --warnings)"),
        (s.copies, "{} item(s) were copies of identical audio (--dedupe): not sent"),
        (
            s.kept,
            "{} paid answer(s) whose outputs could not be written are kept in the state: the "
            "next run writes them without sending them again (failed ones with --retry-failed)",
        ),
        (s.from_kept, "wrote {} item(s) from the answers an earlier run kept (not sent)"),
        (s.recovered, "recovered {} item(s) whose outputs a crashed run had written"),
        (s.skipped, "skipped {} item(s) whose outputs already existed (--force redoes)"),
        (s.rendered, "rendered the formats {} done item(s) lacked from their json (not sent)"),
        (
            s.unrenderable,
            "{} done item(s) have a json a format asked for cannot be made from (not of "
            "Deepgram's usual shape, see the warnings): they keep the outputs they have",
        ),
    ]
    lines += [text.format(count) for count, text in counted if count]
    if s.failed and outcome.sent_next:
        others = " (dgbatch report --failed says what the others need)"
        lines.append(
            f"{outcome.sent_next} of the failed item(s) gave up on Deepgram or their media "
            "host being busy or down, or on uploads cut off (nothing billed): the next run "
            f"sends them again by itself{others if s.failed > outcome.sent_next else ''}"
        )
    if outcome.to_render:
        lines.append(
            f"{outcome.to_render} done item(s) lack a format asked for: the next run renders "
            "it from their json (not sent)"
        )
    for fmt, count in outcome.missing.items():
        lines.append(
            f"{count} done item(s) have no {fmt} output and no json to render it from: "
            "formats are written when an item is done, and done items are not sent again "
            "(--force re-sends every done item of the sources it is given, paid: give it only "
            "theirs; dgbatch report lists outputs)"
        )
    if outcome.report_path is not None:
        lines.append(f"report: {outcome.report_path}")
    return "\n".join(shown(line) for line in lines)  # names others chose: inert
