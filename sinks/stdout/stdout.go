// Package stdout writes each event as one JSON line, for piping ditto into
// other tools and for dry runs.
package stdout

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/ditto-replicator/ditto/sinks"
)

// Sink writes JSON lines to an io.Writer. Writes of concurrent lanes are
// serialised so that lines never interleave.
type Sink struct {
	mu sync.Mutex
	w  *bufio.Writer
}

// New returns a sink writing to w.
func New(w io.Writer) *Sink { return &Sink{w: bufio.NewWriterSize(w, 64<<10)} }

// line is the JSON shape of one event. Data and metadata are embedded as JSON
// when the content type says JSON and they parse; otherwise they are base64
// strings (dataBase64 true), so binary events survive byte-exact.
type line struct {
	Stream string `json:"stream"` // original stream
	// DestinationStream is the stream DITTO_STREAM_TEMPLATE maps Stream
	// to, where it is another.
	DestinationStream string          `json:"destinationStream,omitempty"`
	EventNumber       uint64          `json:"eventNumber"`
	EventID           string          `json:"eventId"`
	EventType         string          `json:"eventType"`
	ContentType       string          `json:"contentType"`
	Created           time.Time       `json:"created"`
	Data              json.RawMessage `json:"data,omitempty"`
	DataBase64        []byte          `json:"dataBase64,omitempty"`
	Metadata          json.RawMessage `json:"metadata,omitempty"`
	MetadataBase64    []byte          `json:"metadataBase64,omitempty"`
}

// Write writes the events and flushes, so a line is out before its event is
// acked.
func (s *Sink) Write(_ context.Context, stream string, events []sinks.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	enc := json.NewEncoder(s.w)
	for i := range events {
		e := &events[i]
		l := line{Stream: e.Stream, EventNumber: e.Number, EventID: e.ID.String(), EventType: e.Type, ContentType: e.ContentType, Created: e.Created.UTC()}
		if stream != e.Stream {
			l.DestinationStream = stream
		}
		if e.ContentType == "application/json" && json.Valid(e.Data) {
			l.Data = e.Data
		} else if len(e.Data) > 0 {
			l.DataBase64 = e.Data
		}
		if json.Valid(e.Metadata) {
			l.Metadata = e.Metadata
		} else if len(e.Metadata) > 0 {
			l.MetadataBase64 = e.Metadata
		}
		if err := enc.Encode(&l); err != nil {
			return &sinks.WriteError{Kind: sinks.Permanent, Written: i, Reason: "encoding event as JSON", Err: err}
		}
	}
	if err := s.w.Flush(); err != nil {
		return &sinks.WriteError{Kind: sinks.Transient, Reason: "writing to stdout", Err: fmt.Errorf("flush: %w", err)}
	}
	return nil
}

// Close flushes what is buffered.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Flush()
}

func init() {
	sinks.Register(sinks.Plugin{
		Name:    "stdout",
		Summary: "writes one JSON line per event to standard output (binary data as base64), for pipes and dry runs.",
		Open: func(_ context.Context, _ sinks.Settings, env sinks.Env) (sinks.Sink, error) {
			return New(env.Stdout), nil
		},
	})
}
