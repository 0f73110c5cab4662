package eventstore

import (
	"context"
	"fmt"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/sinks"
)

// Where the policy drops events inside streams or consolidates streams
// (sinks.Source.Sequenced), destination numbers are the destination's own:
// an event is written exactly once by its Seq instead of by its number.
//
// For a destination stream D, the sink knows (R, K): D's last revision and
// the Seq recorded in the provenance of D's last event. Events of a batch at
// or below K are on D already. If the seqs between K and the first other
// event's SeqFrom are not all dropped (sinks.Source.Covered reads the
// source to tell), an earlier event is still on its way: Behind. Otherwise
// the rest is appended with expected revision R. Appends are serialised by
// the expected revision, an event is appended only when everything before
// it in its lane is on D or dropped, and an event at or below K is never
// appended again: each kept event is written once, in order, whatever
// crashed and however many ditto processes share the group.

// position is what the sink knows of a destination stream.
type position struct {
	exists bool   // the stream has a last event
	rev    uint64 // its revision
	k      uint64 // the Seq its provenance records
}

// sequencedRounds bounds the attempts of one write against a destination
// stream that other processes keep appending to.
const sequencedRounds = 5

// writeSequenced writes events to stream exactly once by Seq (see above).
func (s *Sink) writeSequenced(ctx context.Context, stream string, events []sinks.Event) error {
	written := 0 // leading events on the destination
	for range sequencedRounds {
		pos, cached, err := s.position(ctx, stream, &events[0])
		if err != nil {
			s.pos.forget(stream)
			return failedAt(err, stream, written)
		}
		for written < len(events) && pos.exists && events[written].Seq <= pos.k {
			written++
		}
		if written == len(events) {
			return nil
		}
		batch := events[written:]
		var next uint64 // the first seq not on the destination
		if pos.exists {
			next = pos.k + 1
		}
		if from := batch[0].SeqFrom; from > next {
			if cached {
				// Another process may have written the events between:
				// look at the stream itself before reading the source.
				s.pos.forget(stream)
				continue
			}
			covered, err := s.src.Covered(ctx, stream, &batch[0], next, from-1)
			if err != nil {
				return failedAt(&sinks.WriteError{Kind: sinks.Transient, Reason: "reading the source to tell whether earlier events are dropped", Err: err}, stream, written)
			}
			if !covered {
				return failedAt(&sinks.WriteError{Kind: sinks.Behind,
					Reason: fmt.Sprintf("destination stream %s lacks an earlier event of %s (seq %d..%d); it has not been written yet", stream, batch[0].Stream, next, from-1)}, stream, written)
			}
		}
		var exp esdb.ExpectedRevision = esdb.NoStream{}
		if pos.exists {
			exp = esdb.Revision(pos.rev)
		} else if s.setsTTL() {
			if err := s.setTTL(ctx, stream); err != nil {
				return failedAt(err, stream, written)
			}
		}
		res, err := s.append(ctx, stream, exp, batch)
		if err == nil && res != nil {
			s.pos.put(stream, position{exists: true, rev: res.NextExpectedVersion, k: batch[len(batch)-1].Seq})
			return nil
		}
		s.pos.forget(stream)
		if err == nil {
			return nil
		}
		if !wrongVersion(err) {
			return failedAt(err, stream, written)
		}
		// Another process appended: learn the stream's end again.
	}
	return failedAt(&sinks.WriteError{Kind: sinks.Behind,
		Reason: fmt.Sprintf("destination stream %s changed under each of %d attempts (other ditto processes write it)", stream, sequencedRounds)}, stream, written)
}

// position returns what the sink knows of stream, and whether it is cached,
// reading its last event when it is not.
func (s *Sink) position(ctx context.Context, stream string, ev *sinks.Event) (position, bool, error) {
	if pos, ok := s.pos.get(stream); ok {
		return pos, true, nil
	}
	last, err := s.readLast(ctx, stream)
	if err != nil {
		return position{}, false, err
	}
	if last == nil {
		s.pos.put(stream, position{})
		return position{}, false, nil
	}
	k, err := s.src.Recorded(last.UserMetadata, ev)
	if err != nil {
		return position{}, false, &sinks.WriteError{Kind: sinks.Conflict,
			Reason: fmt.Sprintf("destination stream %s diverged: %v", stream, err)}
	}
	pos := position{exists: true, rev: last.EventNumber, k: k}
	s.pos.put(stream, pos)
	return pos, false, nil
}
