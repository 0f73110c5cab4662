package eventstore

import (
	"context"
	"encoding/json"
	"reflect"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/sinks"
)

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
