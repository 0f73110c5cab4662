package eventstore

import (
	"context"
	"fmt"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/sinks"
)

// Where the destination takes writes of its own (sinks.Source.Guarded:
// active/active, a failback), a stream may hold foreign events. An append
// with expected revision n-1 succeeds whenever the destination stream has n
// events, whoever wrote them: event n would then follow a foreign history,
// and a stream that diverged would quietly go on. So before the sink
// appends after an event it has not written or checked itself, it reads
// the destination's event n-1 (or, if the destination ends before it, its
// last event) and compares its id with the source's event at that number:
// a different id is a Conflict, whatever ditto remembers or forgot, so a
// diverged stream stays diverged and DITTO_CONFLICT_POLICY decides about
// each of its later events. Events ditto wrote or checked are remembered
// per stream (the last number), so a stream it keeps writing costs no reads.

// knownAt reports whether event n of stream is known to be the source's.
func (s *Sink) knownAt(stream string, n uint64) bool {
	got, ok := s.known.get(stream)
	return ok && got == n
}

// guarded reports whether appends are checked (see above).
func (s *Sink) guarded() bool { return s.src != nil && s.src.Guarded() }

// checkBefore returns a Conflict if the destination's event before ev (or
// its last event, if it ends before that) is not the source's event at that
// number. It returns nil if it is, and where it cannot tell: the
// destination stream does not exist or was truncated there, or the source
// no longer has the event.
func (s *Sink) checkBefore(ctx context.Context, stream string, ev *sinks.Event) error {
	if ev.Number == 0 || s.knownAt(stream, ev.Number-1) {
		return nil
	}
	prev := ev.Number - 1
	got, err := s.read(ctx, stream, prev, 1)
	if err != nil {
		return classify(err, stream)
	}
	var at *esdb.RecordedEvent
	switch {
	case len(got) > 0 && got[0].EventNumber == prev:
		at = got[0]
	case len(got) > 0:
		return nil // truncated on the destination ($maxAge, $tb)
	default:
		// The destination ends before prev: it is behind, which is fine if
		// what it holds is the source's.
		last, err := s.readLast(ctx, stream)
		if err != nil {
			return classify(err, stream)
		}
		if last == nil || s.knownAt(stream, last.EventNumber) {
			return nil
		}
		at = last
	}
	id, ok, err := s.src.EventID(ctx, ev.Stream, at.EventNumber)
	if err != nil {
		return &sinks.WriteError{Kind: sinks.Transient, Reason: "reading the source to check the destination's event before the write", Err: err}
	}
	if !ok {
		return nil
	}
	if id != at.EventID {
		return &sinks.WriteError{Kind: sinks.Conflict,
			Reason: fmt.Sprintf("destination stream %s diverged at %d: it holds event %s where the source has %s", stream, at.EventNumber, at.EventID, id)}
	}
	s.known.put(stream, at.EventNumber)
	return nil
}
