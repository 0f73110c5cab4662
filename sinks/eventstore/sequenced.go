package eventstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/esdbconn"
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
	fail := func(we *sinks.WriteError) error {
		we.Written = written
		return we
	}
	for range sequencedRounds {
		pos, cached, err := s.position(ctx, stream, &events[0])
		if err != nil {
			s.pos.forget(stream)
			return fail(asWriteError(err, stream))
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
				return fail(&sinks.WriteError{Kind: sinks.Transient, Reason: "reading the source to tell whether earlier events are dropped", Err: err})
			}
			if !covered {
				return fail(&sinks.WriteError{Kind: sinks.Behind,
					Reason: fmt.Sprintf("destination stream %s lacks an earlier event of %s (seq %d..%d); it has not been written yet", stream, batch[0].Stream, next, from-1)})
			}
		}
		var exp esdb.ExpectedRevision = esdb.NoStream{}
		if pos.exists {
			exp = esdb.Revision(pos.rev)
		} else if s.opts.TimeToLive > 0 && !s.copyMeta() {
			if err := s.setTTL(ctx, stream); err != nil {
				return fail(asWriteError(err, stream))
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
			return fail(classify(err, stream))
		}
		// Another process appended: learn the stream's end again.
	}
	return fail(&sinks.WriteError{Kind: sinks.Behind,
		Reason: fmt.Sprintf("destination stream %s changed under each of %d attempts (other ditto processes write it)", stream, sequencedRounds)})
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

// readLast returns the last event of stream, or nil if it has none.
func (s *Sink) readLast(ctx context.Context, stream string) (*esdb.RecordedEvent, error) {
	start := time.Now()
	defer s.observe("read_stream", start)
	return esdbconn.Call(ctx, s.client, func(client *esdb.Client, _ func() bool) (*esdb.RecordedEvent, error) {
		return lastEvent(ctx, client, stream)
	})
}

func lastEvent(ctx context.Context, client *esdb.Client, stream string) (*esdb.RecordedEvent, error) {
	rs, err := client.ReadStream(ctx, stream, esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.End{}}, 1)
	if err != nil {
		if hasCode(err, esdb.ErrorCodeResourceNotFound) {
			return nil, nil
		}
		return nil, err
	}
	defer rs.Close()
	ev, err := rs.Recv()
	switch {
	case errors.Is(err, io.EOF), hasCode(err, esdb.ErrorCodeResourceNotFound):
		return nil, nil
	case err != nil:
		return nil, err
	}
	return ev.OriginalEvent(), nil
}

func asWriteError(err error, stream string) *sinks.WriteError {
	var we *sinks.WriteError
	if errors.As(err, &we) {
		return we
	}
	return classify(err, stream)
}

// The source stream's metadata is copied (DITTO_COPY_STREAM_METADATA) when
// the sink first writes a destination stream, and again when it writes it
// at least metadataPoll after the last look, if the source's metadata
// stream has a new revision since. (Changes to metadata do not reach ditto
// through category streams, which is why it looks.)
const metadataPoll = time.Minute

// metaState is what the sink last saw of a source stream's metadata.
type metaState struct {
	revision int64
	checked  time.Time
}

func (s *Sink) copyMeta() bool { return s.src != nil && s.src.CopiesStreamMetadata() }

// syncMetadata copies the metadata of ev's source stream to stream when it
// is due (see metadataPoll) and differs from what stream has.
func (s *Sink) syncMetadata(ctx context.Context, stream string, ev *sinks.Event) error {
	st, seen := s.meta.get(stream)
	now := time.Now()
	if seen && now.Sub(st.checked) < s.metaPoll {
		return nil
	}
	md, err := s.src.StreamMetadata(ctx, ev.Stream)
	if err != nil {
		return &sinks.WriteError{Kind: sinks.Transient, Reason: "reading the source stream's metadata", Err: err}
	}
	if !seen || md.Revision != st.revision {
		if err := s.setMetadata(ctx, stream, md.JSON); err != nil {
			return err
		}
	}
	s.meta.put(stream, metaState{revision: md.Revision, checked: now})
	return nil
}

// sameJSON reports whether a and b are equal JSON values.
func sameJSON(a, b []byte) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && reflect.DeepEqual(x, y)
}

// setMetadata sets md (nil: the source has none), with $maxAge from
// DITTO_TIME_TO_LIVE if set, on stream unless it already holds it.
func (s *Sink) setMetadata(ctx context.Context, stream string, md []byte) error {
	want := map[string]any{}
	if md != nil {
		if err := json.Unmarshal(md, &want); err != nil {
			return nil // not an object: nothing ditto can copy
		}
	}
	if s.opts.TimeToLive > 0 {
		want["$maxAge"] = int64(s.opts.TimeToLive / time.Second)
	} else if md == nil {
		return nil // nothing to set
	}
	data, err := json.Marshal(want)
	if err != nil {
		return &sinks.WriteError{Kind: sinks.Permanent, Reason: "encoding stream metadata", Err: err}
	}
	meta := "$$" + stream
	cur, err := s.readLast(ctx, meta)
	if err != nil {
		return asWriteError(err, meta)
	}
	if cur != nil && sameJSON(cur.Data, data) {
		return nil
	}
	start := time.Now()
	_, err = esdbconn.Call(ctx, s.client, func(client *esdb.Client, _ func() bool) (*esdb.WriteResult, error) {
		return client.AppendToStream(ctx, meta, esdb.AppendToStreamOptions{ExpectedRevision: esdb.Any{}},
			esdb.EventData{EventType: "$metadata", ContentType: esdb.ContentTypeJson, Data: data})
	})
	s.observe("set_stream_metadata", start)
	if err != nil {
		we := classify(err, stream)
		we.Reason = "setting stream metadata: " + we.Reason
		return we
	}
	return nil
}
