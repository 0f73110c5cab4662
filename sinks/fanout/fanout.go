// Package fanout writes every batch to several destinations at once and
// reports it written only when all of them have it, so that the source acks
// an event only once every destination holds it (immediate redundancy).
//
// A batch that only some destinations accepted comes back to the replicator
// as a failure with Written set to the shortest durable prefix; the
// replicator retries the rest, and the sink sends a retry only to the
// destinations that do not have those events yet. For that it remembers,
// per destination stream and only while the destinations disagree, the last
// event each destination took (at most Options.MaxStreams streams).
//
// An event that one destination refuses (Permanent, Conflict) is parked by
// the replicator with a reason naming that destination, while the
// destinations that accepted it keep it: they are ahead of the refusing one
// in that stream until the parked event is replayed, which they recognise
// if their sink does (eventstore) and receive again if it does not.
package fanout

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/sinks"
)

// Destination is one named destination.
type Destination struct {
	Name string
	Sink sinks.Sink
	// Rename, if set, rewrites the variable names in the destination's
	// errors to the ones the operator sets (see config.Destination.Rename).
	Rename func(string) string
}

// DefaultMaxStreams is Options.MaxStreams' default: ten times the events in
// flight of a default ditto, about 15 MiB with two destinations.
const DefaultMaxStreams = 100_000

// Options tune the sink.
type Options struct {
	// MaxStreams caps the streams remembered while destinations disagree.
	// When it is reached the least recently written stream is forgotten:
	// a later retry of its events goes to every destination again, which
	// an eventstore destination recognises as already written (no
	// duplicate) and a sink without de-duplication (such as stdout)
	// receives twice. Default DefaultMaxStreams.
	MaxStreams int
	Log        zerolog.Logger
}

// Sink writes to every destination.
type Sink struct {
	dests []Destination
	max   int
	log   zerolog.Logger

	mu      sync.Mutex
	ahead   map[string]*list.Element // value *entry; streams whose destinations disagree
	lru     *list.List               // of *entry, least recently written first
	evicted uint64
}

// entry is how far each destination got in one stream.
type entry struct {
	stream string
	marks  []mark // per destination
}

// mark is the last event a destination durably took (ok false: none known).
type mark struct {
	ok     bool
	number uint64
	id     uuid.UUID
}

// New returns a sink writing to dests, which it owns from now on.
func New(dests []Destination, opts Options) *Sink {
	if opts.MaxStreams <= 0 {
		opts.MaxStreams = DefaultMaxStreams
	}
	return &Sink{dests: dests, max: opts.MaxStreams, log: opts.Log, ahead: map[string]*list.Element{}, lru: list.New()}
}

// outcome is one destination's result for a batch.
type outcome struct {
	durable int               // leading events of the batch it holds
	err     *sinks.WriteError // why it holds no more
}

// Write writes events to every destination that does not hold them yet,
// concurrently. It returns nil when every destination holds the whole
// batch; otherwise a *sinks.WriteError whose Written is the prefix every
// destination holds and whose Kind and Reason are those of a destination
// that stopped there, named in the reason.
func (s *Sink) Write(ctx context.Context, stream string, events []sinks.Event) error {
	if len(events) == 0 {
		return nil
	}
	have := s.held(stream, events)
	res := make([]outcome, len(s.dests))
	var wg sync.WaitGroup
	inline := -1 // the last destination to write runs in this goroutine
	for i := range s.dests {
		if have[i] == len(events) {
			res[i].durable = len(events)
			continue
		}
		if inline >= 0 {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				res[i] = s.write(ctx, i, stream, events, have[i])
			}(inline)
		}
		inline = i
	}
	if inline >= 0 {
		res[inline] = s.write(ctx, inline, stream, events, have[inline])
	}
	wg.Wait()
	s.remember(stream, events, have, res)
	return s.result(res, len(events))
}

func (s *Sink) write(ctx context.Context, i int, stream string, events []sinks.Event, from int) outcome {
	err := s.dests[i].Sink.Write(ctx, stream, events[from:])
	if err == nil {
		return outcome{durable: len(events)}
	}
	we := sinks.Classify(err)
	return outcome{durable: from + min(max(we.Written, 0), len(events)-from), err: we}
}

// result is Write's error from the destinations' outcomes. Where several
// destinations stopped at the same event, one that can still take it
// (transient, behind) speaks before one that refused it (permanent,
// conflict): parking the event must wait until the others have it or
// gave up on it.
func (s *Sink) result(res []outcome, n int) error {
	least, who := n, -1
	for i, r := range res {
		switch {
		case r.durable < least:
			least, who = r.durable, i
		case r.durable == least && who >= 0 && refused(res[who].err) && !refused(r.err):
			who = i
		}
	}
	if who < 0 {
		return nil
	}
	we := res[who].err
	return &sinks.WriteError{Kind: we.Kind, Written: least, Reason: s.named(who, we.Reason), Err: we.Err}
}

func refused(we *sinks.WriteError) bool {
	return we != nil && (we.Kind == sinks.Permanent || we.Kind == sinks.Conflict)
}

// named is msg of destination i with the destination's name in front and
// its variable names renamed.
func (s *Sink) named(i int, msg string) string {
	if r := s.dests[i].Rename; r != nil {
		msg = r(msg)
	}
	return "destination " + s.dests[i].Name + ": " + msg
}

// held returns, per destination, how many leading events of the batch it is
// known to hold already.
func (s *Sink) held(stream string, events []sinks.Event) []int {
	have := make([]int, len(s.dests))
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.ahead[stream]
	if !ok {
		return have
	}
	for i, m := range el.Value.(*entry).marks {
		if !m.ok {
			continue
		}
		k := 0
		for k < len(events) && position(&events[k]) <= m.number {
			k++
		}
		// Where the batch has the event at the mark, it must be the one
		// remembered: if not, the stream's events are not the ones the
		// destination took, and it gets the whole batch (its sink tells
		// what it holds).
		if k > 0 && position(&events[k-1]) == m.number && events[k-1].ID != m.id {
			k = 0
		}
		have[i] = k
	}
	return have
}

// position orders the events of one destination stream: a destination holds
// every event of a batch up to the one at its mark.
func position(e *sinks.Event) uint64 { return e.Seq }

// remember records how far each destination got in the stream, or forgets
// the stream once all got equally far.
func (s *Sink) remember(stream string, events []sinks.Event, have []int, res []outcome) {
	s.mu.Lock()
	defer s.mu.Unlock()
	el, known := s.ahead[stream]
	if !known && equalDurable(res) {
		return // the usual case: nothing to remember, nothing allocated
	}
	marks := make([]mark, len(s.dests))
	for i, r := range res {
		switch {
		case have[i] == len(events) && known:
			// Not written to: it may hold more than the batch.
			marks[i] = el.Value.(*entry).marks[i]
		case r.durable > 0:
			last := &events[r.durable-1]
			marks[i] = mark{ok: true, number: position(last), id: last.ID}
		}
		// Otherwise nothing of the batch: what it held before no longer
		// matters.
	}
	agree := true
	for _, m := range marks[1:] {
		if m.ok != marks[0].ok || m.number != marks[0].number {
			agree = false
			break
		}
	}
	if agree {
		if known {
			s.lru.Remove(el)
			delete(s.ahead, stream)
		}
		return
	}
	if known {
		el.Value.(*entry).marks = marks
		s.lru.MoveToBack(el)
		return
	}
	if s.lru.Len() >= s.max {
		s.evictLocked()
	}
	s.ahead[stream] = s.lru.PushBack(&entry{stream: stream, marks: marks})
}

func equalDurable(res []outcome) bool {
	for _, r := range res[1:] {
		if r.durable != res[0].durable {
			return false
		}
	}
	return true
}

func (s *Sink) evictLocked() {
	el := s.lru.Front()
	e := el.Value.(*entry)
	s.lru.Remove(el)
	delete(s.ahead, e.stream)
	s.evicted++
	if s.evicted == 1 || s.evicted%1000 == 0 {
		s.log.Warn().Str("stream", e.stream).Int("maxStreams", s.max).Uint64("forgotten", s.evicted).
			Msg("fan-out forgot how far each destination got in a stream (too many streams where destinations disagree); a retry of its events goes to every destination")
	}
}

// Ready joins every destination's readiness; each problem names its
// destination, and a fatal one (see sinks.FatalError) makes the whole
// answer fatal. Destinations without a probe count as ready.
func (s *Sink) Ready(ctx context.Context) error {
	errs := make([]error, len(s.dests))
	var wg sync.WaitGroup
	for i, d := range s.dests {
		r, ok := d.Sink.(sinks.Readier)
		if !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.Ready(ctx)
		}()
	}
	wg.Wait()
	var out []error
	fatal := false
	for i, err := range errs {
		if err == nil {
			continue
		}
		fatal = fatal || sinks.IsFatal(err)
		out = append(out, &namedError{msg: s.named(i, err.Error()), err: err})
	}
	err := errors.Join(out...)
	if fatal {
		return sinks.Fatal(err)
	}
	return err
}

// Held is what every destination holds: per stream, the least of their
// last event numbers. It fails if a destination cannot tell.
func (s *Sink) Held(ctx context.Context, streams []string) (map[string]int64, error) {
	out := make(map[string]int64, len(streams))
	for i, d := range s.dests {
		h, ok := d.Sink.(sinks.Holder)
		if !ok {
			return nil, fmt.Errorf("destination %s cannot tell what it holds", d.Name)
		}
		got, err := h.Held(ctx, streams)
		if err != nil {
			return nil, &namedError{msg: s.named(i, err.Error()), err: err}
		}
		for _, stream := range streams {
			n, ok := got[stream]
			if !ok {
				n = -1
			}
			if have, seen := out[stream]; i == 0 || !seen || n < have {
				out[stream] = n
			}
		}
	}
	return out, nil
}

// namedError is a destination's error told by named; it unwraps to the
// original.
type namedError struct {
	msg string
	err error
}

func (n *namedError) Error() string { return n.msg }
func (n *namedError) Unwrap() error { return n.err }

// Close closes every destination.
func (s *Sink) Close() error {
	var errs []error
	for i, d := range s.dests {
		if err := d.Sink.Close(); err != nil {
			errs = append(errs, &namedError{msg: s.named(i, err.Error()), err: err})
		}
	}
	return errors.Join(errs...)
}

// Streams is how many streams the sink remembers because their destinations
// disagree.
func (s *Sink) Streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lru.Len()
}
