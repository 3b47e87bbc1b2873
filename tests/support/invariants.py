"""The resilience campaign's invariant checker: what was sent against what each client got.

Every scenario feeds one `Checker` from both sides, then asserts on its `report()`:

    checker = Checker()
    checker.follow("alice-1", "alice")                   # before anything is published
    checker.commit("alice", "notifications", note_id)    # the producer said yes (a 201)
    checker.publish("alice", envelope, ref=note_id)      # a tap queue saw it on the exchange
    checker.receive("alice-1", envelope)                 # the client yielded it
    report = checker.report()
    assert report.ok, report.summary()

Per (user, stream) the published envelopes are the truth: each follower of that user
should receive every one published after it began following, once (after dedupe on
`meta.event_id`), in order (by `meta.seq` where present, else in publish order). What
it did not receive is a gap; a gap the client's `recovered` frame accounted for (the
replayed frames it yielded just before it) is closed by recovery; a missing run with a
`resync` frame for its stream between its neighbours was left to a refetch; any other
missing run is lost. `commit` and `publish` together show what the producer side lost
(committed, never published) or half-wrote (published, never committed).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Literal

from realtime_shared.envelope import Envelope

SYSTEM = "system"
Closed = Literal["recovery", "resync", "lost"]


@dataclass(frozen=True, slots=True)
class Gap:
    """Consecutive events one client did not get live, and what closed the gap."""

    client: str
    stream: str
    event_ids: tuple[str, ...]
    closed_by: Closed


@dataclass(frozen=True, slots=True)
class Disorder:
    client: str
    stream: str
    before: str
    after: str
    """`after` arrived after `before` but was published before it."""


@dataclass
class Report:
    committed: int = 0
    published: int = 0
    """Distinct events that went out."""
    republished: int = 0
    """Copies of an event id already published: the wire's at-least-once, not a fault
    unless a client yields one twice (then it is in `duplicates`)."""
    delivered: int = 0
    """Frames of published events the clients received, duplicates included."""
    unpublished: list[str] = field(default_factory=list)
    """Refs committed that no envelope carried."""
    uncommitted: list[str] = field(default_factory=list)
    """Refs an envelope carried that were never committed (half-written)."""
    gaps: list[Gap] = field(default_factory=list)
    duplicates: dict[tuple[str, str], int] = field(default_factory=dict)
    """(client, event_id) -> extra copies received."""
    disorders: list[Disorder] = field(default_factory=list)
    unexpected: list[tuple[str, str]] = field(default_factory=list)
    """(client, event id or event name) received but never published for its user."""

    def closed_by(self, how: Closed) -> list[Gap]:
        return [gap for gap in self.gaps if gap.closed_by == how]

    @property
    def lost(self) -> list[Gap]:
        return self.closed_by("lost")

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicated, reordered, unexpected or half-written; gaps closed by
        recovery or left to a refetch are allowed (each scenario asserts which it wants)."""
        problems = (
            self.unpublished,
            self.uncommitted,
            self.lost,
            self.duplicates,
            self.disorders,
            self.unexpected,
        )
        return not any(problems)

    def summary(self) -> str:
        def events(gaps: list[Gap]) -> int:
            return sum(len(gap.event_ids) for gap in gaps)

        lines = [
            f"committed {self.committed}, published {self.published} "
            f"(and {self.republished} again), delivered {self.delivered}",
            f"gaps: {len(self.lost)} lost ({events(self.lost)} events), "
            f"{len(self.closed_by('recovery'))} closed by recovery "
            f"({events(self.closed_by('recovery'))} events), "
            f"{len(self.closed_by('resync'))} left to a refetch",
            f"duplicates {sum(self.duplicates.values())}, order violations "
            f"{len(self.disorders)}, unexpected {len(self.unexpected)}",
            f"committed but unpublished {len(self.unpublished)}, "
            f"published but uncommitted {len(self.uncommitted)}",
        ]
        # The first few of each kind: enough to start looking, short enough to read.
        for gap in self.lost[:5]:
            lines.append(f"  lost on {gap.client}/{gap.stream}: {list(gap.event_ids)}")
        for (client, event_id), extra in list(self.duplicates.items())[:5]:
            lines.append(f"  {client} got {event_id} {extra + 1} times")
        for d in self.disorders[:5]:
            lines.append(f"  {d.client}/{d.stream}: {d.after} after {d.before}")
        for client, what in self.unexpected[:5]:
            lines.append(f"  {client} got {what}, never published")
        lines += [f"  unpublished {ref}" for ref in self.unpublished[:5]]
        lines += [f"  uncommitted {ref}" for ref in self.uncommitted[:5]]
        return "\n".join(lines)


@dataclass
class _Frame:
    envelope: Envelope
    replayed: bool = False


@dataclass
class _Follower:
    user: str
    since: dict[str, int]
    """Per stream: how many events were published before it began following."""
    frames: list[_Frame] = field(default_factory=list)
    resyncs: list[tuple[int, frozenset[str]]] = field(default_factory=list)
    """(arrival position among `frames`, streams) of each resync frame."""


def event_id(envelope: Envelope) -> str:
    value = envelope.meta.get("event_id")
    return str(value) if value is not None else ""


def _seq(envelope: Envelope) -> int | None:
    seq = envelope.meta.get("seq")
    return seq if isinstance(seq, int) else None


class Checker:
    def __init__(self) -> None:
        self._committed: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._published: dict[tuple[str, str], list[tuple[Envelope, str]]] = defaultdict(list)
        self._followers: dict[str, _Follower] = {}
        self._sent_ids: set[str] = set()
        self._republished = 0

    # -- the producer side -------------------------------------------------------------

    def commit(self, user: str, stream: str, ref: str) -> None:
        """The producer acknowledged `ref` (e.g. the notification id of a 201)."""
        self._committed[(user, stream)].append(ref)

    def publish(self, user: str, envelope: Envelope, ref: str | None = None) -> None:
        """`envelope` went out for `user` (`ref`: what `commit` named it; its event id).
        The same event id again is a republish (at-least-once): counted, not expected twice."""
        eid = event_id(envelope)
        if eid and eid in self._sent_ids:
            self._republished += 1
            return
        self._sent_ids.add(eid)
        self._published[(user, envelope.stream)].append((envelope, ref or eid))

    # -- the client side ---------------------------------------------------------------

    def follow(self, client: str, user: str) -> None:
        """`client` (any unique name) receives `user`'s events from now on."""
        since = {stream: len(sent) for (u, stream), sent in self._published.items() if u == user}
        self._followers[client] = _Follower(user, since)

    def receive(self, client: str, envelope: Envelope) -> None:
        """What the client yielded, in order, `system` frames included."""
        follower = self._followers[client]
        if envelope.stream == SYSTEM and envelope.event == "recovered":
            self._mark_replayed(follower, envelope)
        elif envelope.stream == SYSTEM and envelope.event == "resync":
            streams = frozenset(str(s) for s in envelope.data.get("streams", []))
            follower.resyncs.append((len(follower.frames), streams))
        elif envelope.stream != SYSTEM:
            follower.frames.append(_Frame(envelope))

    @staticmethod
    def _mark_replayed(follower: _Follower, recovered: Envelope) -> None:
        # The client yields the replayed frames just before its `recovered` frame.
        if recovered.data.get("recovered") is not True:
            return
        count = int(recovered.data.get("replayed", 0))
        stream = recovered.data.get("stream")
        for frame in reversed(follower.frames):
            if count == 0:
                break
            if frame.envelope.stream == stream:
                frame.replayed = True
                count -= 1

    # -- the verdict -------------------------------------------------------------------

    def report(self) -> Report:
        report = Report(
            committed=sum(map(len, self._committed.values())),
            published=sum(map(len, self._published.values())),
            republished=self._republished,
        )
        self._check_producer(report)
        for client, follower in self._followers.items():
            self._check_follower(report, client, follower)
        return report

    def _check_producer(self, report: Report) -> None:
        if not self._committed:
            return  # the producer's acknowledgements were not recorded: nothing to compare
        for key in self._committed.keys() | self._published.keys():
            committed = set(self._committed.get(key, []))
            carried = {ref for _, ref in self._published.get(key, [])}
            report.unpublished += sorted(committed - carried)
            report.uncommitted += sorted(carried - committed)

    def _check_follower(self, report: Report, client: str, follower: _Follower) -> None:
        streams = {stream for user, stream in self._published if user == follower.user}
        streams |= {frame.envelope.stream for frame in follower.frames}
        for stream in sorted(streams):
            sent = self._published.get((follower.user, stream), [])
            expected = [env for env, _ in sent[follower.since.get(stream, 0) :]]
            if all(_seq(env) is not None for env in expected):
                expected.sort(key=lambda env: _seq(env) or 0)
            frames = [f for f in follower.frames if f.envelope.stream == stream]
            self._compare(report, client, follower, stream, expected, frames)

    def _compare(
        self,
        report: Report,
        client: str,
        follower: _Follower,
        stream: str,
        expected: list[Envelope],
        frames: list[_Frame],
    ) -> None:
        rank = {event_id(env): i for i, env in enumerate(expected)}
        everything = {event_id(env) for env, _ in self._published.get((follower.user, stream), [])}
        arrival: dict[str, int] = {}  # event id -> arrival position among all its frames
        replayed: set[str] = set()
        last: str | None = None
        copies = Counter(event_id(f.envelope) for f in frames)
        for eid, count in copies.items():
            if count > 1 and eid in everything:
                report.duplicates[(client, eid)] = count - 1
        for position, frame in enumerate(follower.frames):
            if frame.envelope.stream != stream:
                continue
            eid = event_id(frame.envelope)
            if eid not in everything:
                report.unexpected.append((client, eid or frame.envelope.event))
                continue
            report.delivered += 1
            if eid in arrival or eid not in rank:
                continue  # a duplicate (counted above), or from before it followed
            arrival[eid] = position
            if frame.replayed:
                replayed.add(eid)
            if last is not None and rank[eid] < rank[last]:
                report.disorders.append(Disorder(client, stream, last, eid))
            if last is None or rank[eid] > rank[last]:
                last = eid
        self._gaps(report, client, follower, stream, expected, arrival, replayed)

    @staticmethod
    def _gaps(
        report: Report,
        client: str,
        follower: _Follower,
        stream: str,
        expected: list[Envelope],
        arrival: dict[str, int],
        replayed: set[str],
    ) -> None:
        """Runs of expected events in publish order: missing ones (lost, or resynced if a
        resync frame arrived between their neighbours), and replayed ones (recovered)."""
        ids = [event_id(env) for env in expected]
        i = 0
        while i < len(ids):
            kind = _kind(ids[i], arrival, replayed)
            j = i
            while j < len(ids) and kind and _kind(ids[j], arrival, replayed) == kind:
                j += 1
            if not kind:
                i += 1
                continue
            run = tuple(ids[i:j])
            if kind == "replayed":
                report.gaps.append(Gap(client, stream, run, "recovery"))
            else:
                before = arrival[ids[i - 1]] if i > 0 else -1
                after = arrival.get(ids[j], len(follower.frames) + 1) if j < len(ids) else None
                resynced = any(
                    stream in streams and before < at and (after is None or at <= after)
                    for at, streams in follower.resyncs
                )
                report.gaps.append(Gap(client, stream, run, "resync" if resynced else "lost"))
            i = j


def _kind(eid: str, arrival: dict[str, int], replayed: set[str]) -> str:
    return "replayed" if eid in replayed else "missing" if eid not in arrival else ""
