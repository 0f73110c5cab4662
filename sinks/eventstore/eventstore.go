// Package eventstore writes events to their original streams on a destination
// KurrentDB/EventStoreDB cluster, keeping ids and event numbers, so that the
// destination ends identical to the source whatever crashed in between.
package eventstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/sinks"
)

// Options tune the sink.
type Options struct {
	// SkipVersionCheck appends with expected revision any instead of n-1.
	SkipVersionCheck bool
	// TimeToLive, if positive, is set as $maxAge on every stream the sink
	// creates (whose first event it writes).
	TimeToLive time.Duration
	// Observe, if set, is called after every destination call with the
	// operation name and its duration (for ditto_io_duration_seconds).
	Observe func(operation string, d time.Duration)
	// Dial, if set, makes a new destination client when the current one has
	// closed itself (the v4 client does so for good when the destination is
	// unreachable during a discovery; see esdbconn). Without it, a
	// destination outage of more than a second or two is never recovered.
	Dial func() (*esdb.Client, error)
	// Config, if set, is the destination's parsed connection string: appends
	// then go through Streams.BatchAppend on a connection of the sink's own
	// (one message per write instead of one call with a message per event),
	// or through the client's Append on servers that do not offer it.
	Config *esdb.Configuration
	// Source, if set, is sinks.Env.Source: where it says so, events are
	// written exactly once by Seq (see writeSequenced), and source stream
	// metadata is copied.
	Source sinks.Source
}

// Sink appends to a destination cluster.
type Sink struct {
	client *esdbconn.Client
	batch  *batchAppender // nil: appends go through client
	opts   Options
	src    sinks.Source // nil: plain writes by number, no metadata copy
	seq    bool         // src.Sequenced()
	// pos is what the sink knows of destination streams, where seq; a
	// stream's is dropped on any error.
	pos streamCache[position]
	// known is, per destination stream, the last event number known to
	// hold the source's event, where guarded.
	known streamCache[uint64]

	meta     streamCache[metaState] // by destination stream, with copyMeta
	metaPoll time.Duration          // metadataPoll, shorter in tests
}

// New returns a sink writing through client, which the sink owns from now on.
func New(client *esdb.Client, opts Options) *Sink {
	s := &Sink{client: esdbconn.New(client, opts.Dial), opts: opts, src: opts.Source, metaPoll: metadataPoll}
	s.seq = s.src != nil && s.src.Sequenced()
	if opts.Config != nil {
		s.batch = newBatchAppender(opts.Config)
	}
	return s
}

// Close closes the sink's client (the one given to New, or its replacement;
// a client that has closed itself is left alone, see esdbconn).
func (s *Sink) Close() error {
	if s.batch != nil {
		s.batch.close()
	}
	s.client.Close()
	return nil
}

// Ready reports whether the destination answers: it reads a stream that does
// not exist, which any reachable, authenticated server answers with
// "not found". Rejected credentials are fatal: every event would otherwise
// be retried until the source parks it.
func (s *Sink) Ready(ctx context.Context) error {
	_, err := esdbconn.Call(ctx, s.client, func(client *esdb.Client, _ func() bool) (struct{}, error) {
		rs, err := client.ReadStream(ctx, "ditto-readiness-probe", esdb.ReadStreamOptions{From: esdb.Start{}}, 1)
		if err == nil {
			defer rs.Close()
			_, err = rs.Recv()
		}
		return struct{}{}, err
	})
	if err == nil || errors.Is(err, io.EOF) || hasCode(err, esdb.ErrorCodeResourceNotFound) {
		return nil
	}
	if hasCode(err, esdb.ErrorCodeUnauthenticated) {
		return sinks.Fatal(fmt.Errorf("DITTO_DESTINATION_CONNECTION_STRING: the destination rejected the credentials: %w", err))
	}
	return fmt.Errorf("destination not reachable: %w", err)
}

// Held reads the last event number of each stream on the destination (-1
// for a stream it does not have), a few streams at a time.
func (s *Sink) Held(ctx context.Context, streams []string) (map[string]int64, error) {
	out := make(map[string]int64, len(streams))
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	slots := make(chan struct{}, 8)
	for _, stream := range streams {
		slots <- struct{}{}
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed {
			<-slots
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			n, err := s.last(ctx, stream)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && first == nil {
				first = fmt.Errorf("reading the end of %s on the destination: %w", stream, err)
			}
			out[stream] = n
		}()
	}
	wg.Wait()
	if first != nil {
		return nil, first
	}
	return out, nil
}

// last is the last event number of stream on the destination, -1 if none.
func (s *Sink) last(ctx context.Context, stream string) (int64, error) {
	start := time.Now()
	defer s.observe("read_stream", start)
	return esdbconn.Call(ctx, s.client, func(client *esdb.Client, _ func() bool) (int64, error) {
		return esdbconn.LastNumber(ctx, client, stream)
	})
}

// Write appends events, consecutive events of one source stream, to stream.
// With the version check on, the first append carries expected revision
// first-1 (no-stream for event 0); on wrong-expected-version the destination
// is read to tell events already written (acked), a destination that is
// behind (an earlier event is still on its way) and a diverged stream.
func (s *Sink) Write(ctx context.Context, stream string, events []sinks.Event) error {
	if len(events) == 0 {
		return nil
	}
	if events[0].AtEnd {
		// Records of other streams' events (a conflicts stream): appended
		// at the end, recognised by id when written again.
		return s.writeAny(ctx, stream, events)
	}
	if s.copyMeta() {
		if err := s.syncMetadata(ctx, stream, &events[0]); err != nil {
			return err
		}
	}
	if s.seq {
		return s.writeSequenced(ctx, stream, events)
	}
	if s.setsTTL() && events[0].Number == 0 {
		if err := s.setTTL(ctx, stream); err != nil {
			return err
		}
	}
	if s.opts.SkipVersionCheck {
		return s.writeAny(ctx, stream, events)
	}
	guarded := s.guarded()
	written := 0
	// Each round either finishes, fails, or moves past at least one event
	// already on the destination, so it runs at most len(events)+1 times.
	for written < len(events) {
		batch := events[written:]
		if guarded {
			if err := s.checkBefore(ctx, stream, &batch[0]); err != nil {
				return failedAt(err, stream, written)
			}
		}
		res, err := s.append(ctx, stream, expectedBefore(batch[0].Number), batch)
		if err == nil {
			err = renumbered(stream, batch, res, written)
			if err == nil && guarded {
				s.known.put(stream, batch[len(batch)-1].Number)
			}
			return err
		}
		if !wrongVersion(err) {
			return failedAt(err, stream, written)
		}
		n, err := s.alreadyWritten(ctx, stream, batch)
		written += n
		if n > 0 && guarded {
			s.known.put(stream, batch[n-1].Number)
		}
		if err != nil {
			return failedAt(err, stream, written)
		}
	}
	return nil
}

// renumbered checks that a successful append put batch at its own numbers.
// A soft-deleted destination stream accepts an append with no-stream and
// numbers the events after its hidden ones: the events are then on the
// destination at other numbers, which is a divergence to park, not a success
// to ack. (A real or repeated append reports the batch's last number.)
func renumbered(stream string, batch []sinks.Event, res *esdb.WriteResult, written int) error {
	last := batch[len(batch)-1].Number
	if res == nil || res.NextExpectedVersion == last {
		return nil
	}
	first := res.NextExpectedVersion - uint64(len(batch)-1)
	return &sinks.WriteError{Kind: sinks.Conflict, Written: written,
		Reason: fmt.Sprintf("destination stream %s diverged at %d: it was soft-deleted on the destination, which wrote events %d..%d as %d..%d",
			stream, batch[0].Number, batch[0].Number, last, first, res.NextExpectedVersion)}
}

// alreadyWritten compares batch with what the destination holds from the
// batch's first number on. It returns how many leading events are already
// there (so the rest can be appended after them), or a Behind or Conflict
// error.
func (s *Sink) alreadyWritten(ctx context.Context, stream string, batch []sinks.Event) (int, error) {
	first := batch[0].Number
	got, err := s.read(ctx, stream, first, len(batch))
	if err != nil {
		return 0, err
	}
	if len(got) == 0 {
		return 0, &sinks.WriteError{Kind: sinks.Behind,
			Reason: fmt.Sprintf("destination stream %s ends before event %d; an earlier event has not been written yet", stream, first)}
	}
	n := 0
	for _, ev := range got {
		if ev.EventNumber < first+uint64(n) {
			continue
		}
		if ev.EventNumber > first+uint64(n) {
			// Events before ev were truncated or expired on the destination
			// ($maxAge/$maxCount): they were written once.
			n = int(ev.EventNumber - first)
			if n >= len(batch) {
				return len(batch), nil
			}
		}
		if ev.EventID != batch[n].ID {
			return n, &sinks.WriteError{Kind: sinks.Conflict,
				Reason: fmt.Sprintf("destination stream %s diverged at %d: it holds event %s where the source has %s", stream, ev.EventNumber, ev.EventID, batch[n].ID)}
		}
		n++
		if n == len(batch) {
			break
		}
	}
	return n, nil
}

// writeAny appends with expected revision any. The server recognises a
// batch it already holds (all ids known) but not a batch that overlaps the
// end of the stream; such a batch is then written one event at a time, each
// either recognised or appended.
func (s *Sink) writeAny(ctx context.Context, stream string, events []sinks.Event) error {
	_, err := s.append(ctx, stream, esdb.Any{}, events)
	if err == nil {
		return nil
	}
	if !wrongVersion(err) || len(events) == 1 {
		return classify(err, stream)
	}
	for i := range events {
		if _, err := s.append(ctx, stream, esdb.Any{}, events[i:i+1]); err != nil {
			return failedAt(err, stream, i)
		}
	}
	return nil
}

func (s *Sink) append(ctx context.Context, stream string, exp esdb.ExpectedRevision, events []sinks.Event) (*esdb.WriteResult, error) {
	if s.batch != nil {
		start := time.Now()
		res, err := s.batch.append(ctx, stream, exp, events)
		if !errors.Is(err, errNoBatchAppend) {
			s.observe("append_to_stream", start)
			return res, err
		}
	}
	data := make([]esdb.EventData, len(events))
	for i := range events {
		e := &events[i]
		ct := esdb.ContentTypeBinary
		if e.ContentType == "application/json" {
			ct = esdb.ContentTypeJson
		}
		data[i] = esdb.EventData{EventID: e.ID, EventType: e.Type, ContentType: ct, Data: e.Data, Metadata: e.Metadata}
	}
	start := time.Now()
	res, err := esdbconn.Call(ctx, s.client, func(client *esdb.Client, _ func() bool) (*esdb.WriteResult, error) {
		return client.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: exp}, data...)
	})
	s.observe("append_to_stream", start)
	return res, err
}

func (s *Sink) read(ctx context.Context, stream string, from uint64, count int) ([]*esdb.RecordedEvent, error) {
	start := time.Now()
	defer s.observe("read_stream", start)
	return esdbconn.Call(ctx, s.client, func(client *esdb.Client, _ func() bool) ([]*esdb.RecordedEvent, error) {
		return readStream(ctx, client, stream, from, count)
	})
}

func readStream(ctx context.Context, client *esdb.Client, stream string, from uint64, count int) ([]*esdb.RecordedEvent, error) {
	rs, err := client.ReadStream(ctx, stream, esdb.ReadStreamOptions{Direction: esdb.Forwards, From: esdb.Revision(from)}, uint64(count))
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []*esdb.RecordedEvent
	for len(out) < count {
		ev, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if hasCode(err, esdb.ErrorCodeResourceNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ev.Event)
	}
	return out, nil
}

// readLast returns the last event of stream, or nil if it has none.
func (s *Sink) readLast(ctx context.Context, stream string) (*esdb.RecordedEvent, error) {
	start := time.Now()
	defer s.observe("read_stream", start)
	return esdbconn.Call(ctx, s.client, func(client *esdb.Client, _ func() bool) (*esdb.RecordedEvent, error) {
		return esdbconn.LastEvent(ctx, client, stream)
	})
}

// failedAt is err as a Write's error with the batch's first written events
// durable: every write path stops through it.
func failedAt(err error, stream string, written int) *sinks.WriteError {
	we := asWriteError(err, stream)
	we.Written = written
	return we
}

// asWriteError is err as it is if it is a *sinks.WriteError, else as
// classify says.
func asWriteError(err error, stream string) *sinks.WriteError {
	var we *sinks.WriteError
	if errors.As(err, &we) {
		return we
	}
	return classify(err, stream)
}

// setsTTL reports whether the sink sets $maxAge on the streams it creates
// (DITTO_TIME_TO_LIVE) by itself: where it copies stream metadata,
// setMetadata adds $maxAge to the copy instead.
func (s *Sink) setsTTL() bool { return s.opts.TimeToLive > 0 && !s.copyMeta() }

func (s *Sink) setTTL(ctx context.Context, stream string) error {
	var md esdb.StreamMetadata
	md.SetMaxAge(s.opts.TimeToLive.Truncate(time.Second))
	start := time.Now()
	_, err := esdbconn.Call(ctx, s.client, func(client *esdb.Client, _ func() bool) (*esdb.WriteResult, error) {
		return client.SetStreamMetadata(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: esdb.Any{}}, md)
	})
	s.observe("set_stream_metadata", start)
	if err != nil {
		we := classify(err, stream)
		we.Reason = "setting $maxAge: " + we.Reason
		return we
	}
	return nil
}

func (s *Sink) observe(op string, start time.Time) {
	if s.opts.Observe != nil {
		s.opts.Observe(op, time.Since(start))
	}
}

// expectedBefore is the expected revision of an append whose first event is
// number n.
func expectedBefore(n uint64) esdb.ExpectedRevision {
	if n == 0 {
		return esdb.NoStream{}
	}
	return esdb.Revision(n - 1)
}

// wrongVersion reports whether the destination refused an append for its
// expected revision, through either append path.
func wrongVersion(err error) bool {
	var r *refusal
	if errors.As(err, &r) {
		return r.detail() == "WrongExpectedVersion"
	}
	return hasCode(err, esdb.ErrorCodeWrongExpectedVersion)
}

func hasCode(err error, code esdb.ErrorCode) bool {
	var e *esdb.Error
	return errors.As(err, &e) && e.Code() == code
}

// classify decides, in one place, what a destination error means for the
// events: retry (unavailable, timeouts, authentication, server errors) or
// park (stream deleted, access denied, too large, rejected as invalid).
func classify(err error, stream string) *sinks.WriteError {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &sinks.WriteError{Kind: sinks.Transient, Reason: "destination call timed out or was cancelled", Err: err}
	}
	var r *refusal
	if errors.As(err, &r) {
		return r.classify(stream)
	}
	var e *esdb.Error
	if !errors.As(err, &e) {
		return &sinks.WriteError{Kind: sinks.Transient, Reason: "destination call failed", Err: err}
	}
	switch e.Code() {
	case esdb.ErrorCodeStreamDeleted:
		return &sinks.WriteError{Kind: sinks.Permanent, Reason: fmt.Sprintf("destination stream %s is deleted", stream), Err: err}
	case esdb.ErrorCodeAccessDenied:
		return &sinks.WriteError{Kind: sinks.Permanent, Reason: fmt.Sprintf("access to destination stream %s denied", stream), Err: err}
	case esdb.ErrorCodeUnknown:
		if st, ok := status.FromError(errors.Unwrap(e)); ok && st.Code() == codes.InvalidArgument {
			return &sinks.WriteError{Kind: sinks.Permanent, Reason: "destination rejected the events: " + st.Message(), Err: err}
		}
	}
	return &sinks.WriteError{Kind: sinks.Transient, Reason: "destination unavailable or failing", Err: err}
}
