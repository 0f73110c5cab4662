// Package replicator is ditto's pipeline: it puts each delivery into the lane
// of its destination stream, writes consecutive events of a lane as one
// batch, and turns the outcome of the write into an ack, a retry or a park.
// Events of a destination stream that diverged (sinks.Conflict) go the way
// DITTO_CONFLICT_POLICY says (package conflict): parked, appended to a
// conflicts stream by a write of the same sink, or acked and counted.
//
// Ordering: a lane holds the pending events of one destination stream sorted
// by Seq (the event number, or for a consolidated stream the subscription's
// number); at most one write per lane is in flight, and a batch is a run of
// consecutive Seqs starting at the lowest pending one. Lanes of different
// streams are written concurrently by a fixed pool of writers.
//
// Policy: with a selective-replication policy (package policy), events it
// drops are acked without a write. Where destination numbers are the
// destination's own (filters inside streams, consolidation), dropped events
// join their lane as skip items instead, acked with the batch they fall in,
// so that runs stay contiguous and each written event's SeqFrom tells the
// sink which seqs before it were dropped.
//
// Memory: every pending event is an unacked delivery, so pending events are
// bounded by the subscriptions' buffer sizes; a slow sink stops acks, which
// stops the source from sending (back-pressure).
package replicator

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/cenkalti/backoff/v4"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/consumer"
	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/internal/metrics"
	"github.com/ditto-replicator/ditto/policy"
	"github.com/ditto-replicator/ditto/replicator/conflict"
	"github.com/ditto-replicator/ditto/sinks"
)

// Sink is a destination: Write durably writes consecutive events of one
// source stream, in order, or returns a *sinks.WriteError saying how many
// were written and what kind of failure stopped the rest.
type Sink interface {
	Write(ctx context.Context, stream string, events []sinks.Event) error
	Close() error
}

// Options tune the replicator.
type Options struct {
	Writers        int           // lanes written concurrently
	BatchMaxEvents int           // events per write
	BatchMaxBytes  int           // bytes (sinks.Event.Size) per write
	ReadOnly       bool          // ack without writing
	Throttle       time.Duration // minimum pause between two writes of the process
	WriteRetries   int           // attempts before a transient failure hands events back
	BackoffInitial time.Duration // first pause between attempts (default 50ms)
	BackoffMax     time.Duration // longest pause between attempts
	DrainTimeout   time.Duration // how long a stop waits for in-flight writes
	// Policy, if set and not trivial, filters, maps and annotates events.
	Policy *policy.Policy
	// Conflicts says what becomes of the events of a destination stream
	// that diverged (default conflict.Park); with conflict.Stream they are
	// appended to ConflictStream.
	Conflicts      conflict.Policy
	ConflictStream string
}

// Replicator moves deliveries from the consumer to a sink.
type Replicator struct {
	sink Sink
	opts Options
	log  zerolog.Logger
	m    *metrics.Metrics

	mu       sync.Mutex
	cond     *sync.Cond            // signalled when ready gains a lane, or on closing
	lanes    map[string]*lane      // lanes with pending events or a write in flight
	ready    []*lane               // lanes with pending events and no owner, FIFO
	closing  bool                  // no more dispatches; workers exit when ready is empty
	inflight int                   // deliveries received and not yet acked or nacked
	diverged map[string]divergence // streams found diverged on the destination
	runs     map[string]skipRun    // lanes whose last acked items were skips
	throttle sync.Mutex            // serialises the throttle's clock
	next     time.Time             // earliest time of the next write (throttle)

	pol  *policy.Policy // nil: no policy stage
	seq  bool           // pol.Sequenced(): dropped events are skip items
	cons bool           // pol consolidates: the subscription's numbers order the lanes
}

// skipRun remembers that the seqs [from, next) of a lane were skip items,
// acked at the end of a batch: a later batch that starts at next may extend
// its first event's SeqFrom down to from, sparing the sink a source read.
type skipRun struct{ from, next uint64 }

// maxRuns bounds runs; it is cleared when full (it only spares reads).
const maxRuns = 10000

// divergence remembers where a destination stream stopped matching the
// source, so that later events of the stream go the conflict policy's way at
// once, without a write. (Where the destination takes writes of its own, the
// sink finds a divergence again once this is forgotten, see
// sinks.Source.Guarded; elsewhere this memory is what keeps later events from
// being appended after foreign ones.)
type divergence struct {
	at     uint64
	reason string
	until  time.Time
}

// Divergences are forgotten after divergenceTTL (so that a stream repaired on
// the destination replicates again, e.g. after parked events are replayed)
// and when more than maxDivergences streams have diverged (bounded memory).
const (
	divergenceTTL  = 10 * time.Minute
	maxDivergences = 10000
)

// lane is the pending work of one destination stream. Fields are guarded by
// Replicator.mu. A lane is "owned" while busy: in the ready queue, being
// written by a worker, or waiting on its retry timer.
type lane struct {
	stream   string
	pending  []*item // sorted by Seq, unique Seqs
	busy     bool
	single   bool // write one event at a time, to isolate a permanent failure
	attempts int
	bo       *backoff.ExponentialBackOff
	timer    *time.Timer
}

// item is one event and every delivery of it (a redelivery of an event still
// pending joins the same item and is acked with it).
type item struct {
	ev   sinks.Event
	ds   []*consumer.Delivery
	one  [1]*consumer.Delivery // backs ds for the usual single delivery: one allocation per item
	skip *skip                 // set for a skip item: a dropped event, never written
}

// skip says how a skip item is settled: acked (filtered out), or nacked
// with action and reason (an unresolved link is skipped, an event whose
// metadata cannot carry the required provenance is parked).
type skip struct {
	nack   bool
	action esdb.NackAction
	reason string
}

var ackSkip = &skip{}

func newItem(ev sinks.Event, d *consumer.Delivery, sk *skip) *item {
	it := &item{ev: ev, skip: sk}
	it.one[0] = d
	it.ds = it.one[:1:1]
	return it
}

// New returns a replicator writing to sink.
func New(sink Sink, m *metrics.Metrics, opts Options, log zerolog.Logger) *Replicator {
	if opts.Writers <= 0 {
		opts.Writers = 1
	}
	if opts.BatchMaxEvents <= 0 {
		opts.BatchMaxEvents = 1
	}
	if opts.WriteRetries <= 0 {
		opts.WriteRetries = 1
	}
	if opts.BackoffInitial <= 0 {
		opts.BackoffInitial = 50 * time.Millisecond
	}
	if opts.BackoffMax < opts.BackoffInitial {
		opts.BackoffMax = opts.BackoffInitial
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	r := &Replicator{sink: sink, opts: opts, log: log, m: m, lanes: map[string]*lane{}, diverged: map[string]divergence{}, runs: map[string]skipRun{}}
	if opts.Policy != nil && !opts.Policy.Trivial() {
		r.pol, r.seq, r.cons = opts.Policy, opts.Policy.Sequenced(), opts.Policy.Mode() == policy.Consolidated
	}
	r.cond = sync.NewCond(&r.mu)
	return r
}

// Run replicates deliveries from in until stop is cancelled, then stops
// taking deliveries, waits up to DrainTimeout for in-flight writes to finish
// and be acked, and returns. Events still pending then are left unacked: the
// source redelivers them.
func (r *Replicator) Run(stop context.Context, in <-chan *consumer.Delivery) error {
	writeCtx, cancelWrites := context.WithCancel(context.Background())
	defer cancelWrites()
	var wg sync.WaitGroup
	for i := 0; i < r.opts.Writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.work(writeCtx)
		}()
	}
loop:
	for {
		// A select on both channels locks both for every event: look at
		// stop and take a waiting delivery on their own first, each
		// costing next to nothing when it cannot go ahead.
		select {
		case <-stop.Done():
			break loop
		default:
		}
		select {
		case d := <-in:
			r.dispatch(d)
			continue
		default:
		}
		select {
		case d := <-in:
			r.dispatch(d)
		case <-stop.Done():
			break loop
		}
	}
	r.drain(cancelWrites)
	wg.Wait()
	return nil
}

// drain stops new work: lanes not being written (queued or waiting for a
// retry) are left unacked for redelivery, and writes in flight get until
// DrainTimeout to finish; workers exit once they are done.
func (r *Replicator) drain(cancelWrites context.CancelFunc) {
	time.AfterFunc(r.opts.DrainTimeout, cancelWrites)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closing = true
	for _, l := range r.ready {
		r.forgetLocked(l)
	}
	r.ready = nil
	for _, l := range r.lanes {
		if l.timer != nil && l.timer.Stop() {
			r.forgetLocked(l)
		}
	}
	r.cond.Broadcast()
}

// forgetLocked drops a lane's pending events without acking them.
func (r *Replicator) forgetLocked(l *lane) {
	for _, it := range l.pending {
		r.inflight -= len(it.ds)
	}
	r.m.InFlight.Set(float64(r.inflight))
	l.pending = nil
	l.busy = false
	l.timer = nil
	delete(r.lanes, l.stream)
}

// dispatch routes one delivery: unresolved links and system events are
// skipped, events the policy drops are acked (or, where destination numbers
// are the destination's own, join their lane as skip items), read-only mode
// acks, and every other event goes to the lane of its destination stream,
// with provenance where it is written. Without a policy the stage costs a
// nil check at each of its steps.
func (r *Replicator) dispatch(d *consumer.Delivery) {
	rec := d.Event.Event
	if rec == nil {
		r.unresolved(d)
		return
	}
	if strings.HasPrefix(rec.StreamID, "$") {
		r.system(d, rec)
		return
	}
	seq, dest := rec.EventNumber, rec.StreamID
	if r.pol != nil {
		if r.cons {
			seq = d.OriginalNumber()
		}
		if reason, keep := r.pol.Keep(rec.StreamID, rec.EventType, rec.UserMetadata); !keep {
			d.Sub.Metrics.Filtered[reason.String()].Inc()
			// Where the subscription's numbers order the lane, every delivery
			// is one of them; elsewhere a dropped stream has no lane to keep.
			if r.seq && (reason != policy.ByStream || r.cons) {
				r.skipItem(d, rec.StreamID, seq, ackSkip)
				return
			}
			r.ack([]*consumer.Delivery{d})
			return
		}
	}
	if r.opts.ReadOnly {
		r.log.Debug().Str("type", rec.EventType).Uint64("number", rec.EventNumber).Str("stream", rec.StreamID).
			Uint64("originalNumber", d.OriginalNumber()).Msg("received (read-only)")
		d.Sub.Metrics.Skipped.Inc()
		r.ack([]*consumer.Delivery{d})
		return
	}
	if r.pol != nil {
		if dest = r.pol.Destination(rec.StreamID); dest == "" {
			r.log.Warn().Str("stream", rec.StreamID).Uint64("number", rec.EventNumber).Msg("parking event: DITTO_STREAM_TEMPLATE maps its stream to an empty name")
			d.Sub.Metrics.Parked.Inc()
			r.nack([]*consumer.Delivery{d}, esdb.NackActionPark, "ditto: DITTO_STREAM_TEMPLATE maps stream "+rec.StreamID+" to an empty name")
			return
		}
	}
	ev := sinks.Event{Stream: rec.StreamID, Number: rec.EventNumber, Seq: seq, SeqFrom: seq, ID: rec.EventID, Type: rec.EventType,
		ContentType: rec.ContentType, Data: rec.Data, Metadata: rec.UserMetadata, Created: rec.CreatedDate}
	if r.pol != nil && r.pol.Provenance() {
		md, err := r.pol.Annotate(rec.EventType, rec.Data, rec.UserMetadata, policy.Coordinates{
			Stream: rec.StreamID, Number: rec.EventNumber, Created: rec.CreatedDate,
			SubStream: d.Sub.Stream, SubNumber: d.OriginalNumber()})
		switch {
		case err == nil:
			ev.Metadata = md
		case r.seq:
			// Without provenance the event cannot be written exactly once
			// here: it is parked, and counts as dropped for the events
			// after it (see policy.Source.Covered).
			r.skipItem(d, rec.StreamID, seq, &skip{nack: true, action: esdb.NackActionPark, reason: "ditto: " + r.pol.NotObjectReason()})
			return
		}
		// Otherwise metadata that is not a JSON object is copied unchanged.
	}
	// ev is all the lane needs: while the delivery waits for its ack it
	// keeps the event's bytes, not the decoded records.
	d.Release()
	r.enqueue(dest, ev, d, nil)
}

// unresolved skips a link whose event is deleted or truncated on the
// source. Where destination numbers are the destination's own, a link into
// a kept stream joins its lane as a skip item (at the link's number in a
// consolidated stream), so that the lane's runs stay contiguous.
func (r *Replicator) unresolved(d *consumer.Delivery) {
	link := d.Event.OriginalEvent()
	d.Sub.Metrics.Unresolved.Inc()
	r.log.Info().Str("subscription", d.Sub.String()).Uint64("linkNumber", link.EventNumber).Str("link", string(link.Data)).
		Msg("skipping unresolved link: the source event is deleted or truncated")
	reason := "ditto: unresolved link " + string(link.Data)
	if r.seq {
		if stream, n, ok := esdbconn.ParseLink(link.Data); ok && (r.cons || r.pol.KeepsStream(stream)) {
			if r.cons {
				n = d.OriginalNumber()
			}
			r.skipItem(d, stream, n, &skip{nack: true, action: esdb.NackActionSkip, reason: reason})
			return
		}
	}
	r.nack([]*consumer.Delivery{d}, esdb.NackActionSkip, reason)
}

// system skips a system event, such as the $metadata a deletion leaves in
// $$stream (linked from $ce- with "$deleted"): ditto copies events, not
// deletions or truncations.
func (r *Replicator) system(d *consumer.Delivery, rec *esdb.RecordedEvent) {
	r.log.Debug().Str("type", rec.EventType).Uint64("number", rec.EventNumber).Str("stream", rec.StreamID).
		Msg("skipping system event")
	d.Sub.Metrics.Skipped.Inc()
	// In a consolidated stream, the subscription's numbers order the
	// lane: a deletion's $metadata is one of them.
	if stream, ok := strings.CutPrefix(rec.StreamID, "$$"); ok && r.cons && stream != "" && !strings.HasPrefix(stream, "$") {
		r.skipItem(d, stream, d.OriginalNumber(), ackSkip)
		return
	}
	r.ack([]*consumer.Delivery{d})
}

// skipItem puts a dropped event of the original stream into its
// destination stream's lane at seq.
func (r *Replicator) skipItem(d *consumer.Delivery, stream string, seq uint64, sk *skip) {
	ev := sinks.Event{Stream: stream, Seq: seq, SeqFrom: seq}
	if rec := d.Event; rec != nil && rec.Event != nil {
		ev.Number = rec.Event.EventNumber
	}
	d.Release()
	dest := r.pol.Destination(stream)
	if dest == "" {
		r.settleSkips([]*item{newItem(ev, d, sk)})
		return
	}
	r.enqueue(dest, ev, d, sk)
}

// enqueue adds an event (or a skip item, if sk is set) to the lane of
// stream.
func (r *Replicator) enqueue(stream string, ev sinks.Event, d *consumer.Delivery, sk *skip) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inflight++
	r.m.InFlight.Set(float64(r.inflight))
	l := r.lanes[stream]
	if l == nil {
		l = &lane{stream: stream}
		r.lanes[stream] = l
	}
	l.add(ev, d, sk)
	if !l.busy {
		l.busy = true
		r.ready = append(r.ready, l)
		r.cond.Signal()
	}
}

// add inserts ev in Seq order, joining an item of the same Seq.
func (l *lane) add(ev sinks.Event, d *consumer.Delivery, sk *skip) {
	n := len(l.pending)
	if n == 0 || l.pending[n-1].ev.Seq < ev.Seq {
		l.pending = append(l.pending, newItem(ev, d, sk))
		return
	}
	i := sort.Search(n, func(i int) bool { return l.pending[i].ev.Seq >= ev.Seq })
	if l.pending[i].ev.Seq == ev.Seq {
		l.pending[i].ds = append(l.pending[i].ds, d)
		return
	}
	l.pending = append(l.pending, nil)
	copy(l.pending[i+1:], l.pending[i:])
	l.pending[i] = newItem(ev, d, sk)
}

// work is one writer: it takes a ready lane, writes its next batch, and
// settles the outcome, until the replicator closes.
func (r *Replicator) work(ctx context.Context) {
	// events grows to the largest batch this writer has written and is
	// reused: sized to BatchMaxEvents up front, the writers' slices were
	// megabytes to clear at start, when batches are small.
	var events []sinks.Event
	for {
		r.mu.Lock()
		for len(r.ready) == 0 && !r.closing {
			r.cond.Wait()
		}
		if len(r.ready) == 0 {
			r.mu.Unlock()
			return
		}
		l := r.ready[0]
		r.ready[0] = nil
		r.ready = r.ready[1:]
		batch := r.takeLocked(l)
		from := batch[0].ev.Seq
		if r.seq {
			if run, ok := r.runs[l.stream]; ok && run.next == from {
				from = run.from
			}
		}
		r.mu.Unlock()

		events = events[:0]
		trailing := from // where the batch's trailing skip items start
		if r.seq {
			for _, it := range batch {
				if it.skip != nil {
					continue
				}
				ev := it.ev
				ev.SeqFrom = trailing
				events = append(events, ev)
				trailing = ev.Seq + 1
			}
		} else {
			for _, it := range batch {
				events = append(events, it.ev)
			}
		}
		start := time.Now()
		var err error
		if len(events) > 0 {
			err = r.knownDivergence(l.stream, events[0].Seq)
			if err == nil {
				r.wait(ctx)
				err = r.sink.Write(ctx, l.stream, events)
			}
		}
		r.settle(ctx, l, batch, len(events), trailing, err, time.Since(start))
	}
}

// takeLocked removes the next batch from l: the run of consecutive Seqs
// starting at the lowest pending one, within the batch limits.
func (r *Replicator) takeLocked(l *lane) []*item {
	max := r.opts.BatchMaxEvents
	if l.single {
		max = 1
	}
	n, bytes := 0, 0
	for n < len(l.pending) && n < max {
		it := l.pending[n]
		if n > 0 && (it.ev.Seq != l.pending[n-1].ev.Seq+1 || bytes+it.ev.Size() > r.opts.BatchMaxBytes) {
			break
		}
		bytes += it.ev.Size()
		n++
	}
	batch := make([]*item, n)
	copy(batch, l.pending[:n])
	l.pending = l.pending[n:]
	return batch
}

// settle acks what was written and decides what happens to the rest. Of
// batch, real (non-skip) items were written; trailing is the first Seq of
// the batch's trailing skip items (its last Seq + 1 if there are none).
func (r *Replicator) settle(ctx context.Context, l *lane, batch []*item, real int, trailing uint64, err error, took time.Duration) {
	written := real
	var we *sinks.WriteError
	if err != nil {
		we = sinks.Classify(err)
		written = we.Written
	}
	// done is how many items are settled: the written events, with the skip
	// items before each; all of them once every event is written.
	done := written
	if r.seq {
		done = len(batch)
		if written < real {
			done = 0
			for n := 0; n < written; done++ {
				if batch[done].skip == nil {
					n++
				}
			}
		}
	}
	if done > 0 {
		r.acked(l, batch[:done], took)
	}
	rest := batch[done:]
	retryIn := time.Duration(0)
	if len(rest) > 0 {
		retryIn = r.failed(ctx, l, rest, we)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seq && done == len(batch) {
		last := batch[len(batch)-1]
		switch {
		case last.skip != nil:
			if len(r.runs) >= maxRuns {
				clear(r.runs)
			}
			r.runs[l.stream] = skipRun{from: trailing, next: last.ev.Seq + 1}
		default:
			delete(r.runs, l.stream)
		}
	}
	if written > 0 {
		l.attempts = 0
		l.single = false
		if l.bo != nil {
			l.bo.Reset()
		}
	}
	switch {
	case retryIn > 0 && !r.closing:
		l.timer = time.AfterFunc(retryIn, func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			if l.timer == nil || r.closing {
				return
			}
			l.timer = nil
			r.ready = append(r.ready, l)
			r.cond.Signal()
		})
	case retryIn > 0:
		r.forgetLocked(l)
	case len(l.pending) > 0 && !r.closing:
		r.ready = append(r.ready, l)
		r.cond.Signal()
	case len(l.pending) > 0:
		r.forgetLocked(l)
	default:
		l.busy = false
		delete(r.lanes, l.stream)
	}
}

// acked acks written events and records them, and settles the skip items
// among them.
func (r *Replicator) acked(l *lane, items []*item, took time.Duration) {
	ds := make([]*consumer.Delivery, 0, len(items))
	now := time.Now()
	// Processed is counted once per subscription and write, not per event:
	// writers on every core would otherwise share its cache line per event.
	var sub *consumer.Subscription
	n := 0
	var first, lastReal *item
	written := 0
	for _, it := range items {
		if it.skip != nil {
			if !it.skip.nack {
				ds = append(ds, it.ds...)
			} else {
				r.settleSkips([]*item{it})
			}
			continue
		}
		if first == nil {
			first = it
		}
		lastReal = it
		written++
		for _, d := range it.ds {
			ds = append(ds, d)
			if d.Sub != sub {
				if n > 0 {
					sub.Metrics.Processed.Add(float64(n))
				}
				sub, n = d.Sub, 0
			}
			n++
		}
		it.ds[0].Sub.Metrics.ReplicationDelay.Observe(now.Sub(it.ev.Created).Seconds())
	}
	if written == 0 {
		// Only skip items: nothing was written.
		if len(ds) > 0 {
			r.ack(ds)
		}
		return
	}
	sub.Metrics.Processed.Add(float64(n))
	last := items[len(items)-1].ds[0]
	last.Sub.Metrics.CurrentEvent.Set(float64(last.OriginalNumber()))
	r.m.BatchSize.Observe(float64(written))
	r.ack(ds)
	if e := r.log.Debug(); e.Enabled() {
		e.Str("type", first.ev.Type).Str("stream", l.stream).
			Uint64("from", first.ev.Number).Uint64("to", lastReal.ev.Number).
			Uint64("originalFrom", first.ds[0].OriginalNumber()).
			Int("events", written).Dur("took", took).
			Msg(fmt.Sprintf("Replicating %s #%d..#%d from %s (Original Event: #%d) completed in %.1f ms",
				first.ev.Type, first.ev.Number, lastReal.ev.Number, l.stream,
				first.ds[0].OriginalNumber(), float64(took.Microseconds())/1000))
	}
}

// settleSkips settles skip items by their own action; they are never
// written, whatever happened to the events around them.
func (r *Replicator) settleSkips(items []*item) {
	var acks []*consumer.Delivery
	for _, it := range items {
		if !it.skip.nack {
			acks = append(acks, it.ds...)
			continue
		}
		if it.skip.action == esdb.NackActionPark {
			for _, d := range it.ds {
				d.Sub.Metrics.Parked.Inc()
			}
		}
		r.nack(it.ds, it.skip.action, it.skip.reason)
	}
	if len(acks) > 0 {
		r.ack(acks)
	}
}

// realItems settles the skip items of items and returns the others.
func (r *Replicator) realItems(items []*item) []*item {
	var skips, real []*item
	for _, it := range items {
		if it.skip != nil {
			skips = append(skips, it)
		} else {
			real = append(real, it)
		}
	}
	if len(skips) > 0 {
		r.settleSkips(skips)
	}
	return real
}

// failed handles the events of a write that did not go through. It returns
// the pause before the lane's next attempt, or 0 if the events have been
// handed back (nack) and the lane may go on.
func (r *Replicator) failed(ctx context.Context, l *lane, rest []*item, we *sinks.WriteError) time.Duration {
	if ctx.Err() != nil {
		// Stopping: leave the events unacked for redelivery.
		r.requeue(l, rest)
		return time.Nanosecond
	}
	switch we.Kind {
	case sinks.Permanent, sinks.Conflict:
		if we.Kind == sinks.Permanent && len(rest) > 1 {
			// Isolate the event that fails: the rest may be fine.
			r.requeue(l, rest)
			r.mu.Lock()
			l.single = true
			r.mu.Unlock()
			return 0
		}
		if rest = r.realItems(rest); len(rest) == 0 {
			return 0
		}
		if we.Kind == sinks.Conflict {
			r.markDiverged(l.stream, rest[0].ev.Seq, we.Reason)
			if rest, we = r.conflicted(ctx, l, rest, we); len(rest) == 0 {
				return 0
			}
			// The conflicts stream could not be written now: retried
			// below as any transient failure (the events' own stream is
			// not written again while the divergence is remembered).
			break
		}
		r.park(l, rest, we)
		return 0
	}
	r.mu.Lock()
	l.attempts++
	attempts := l.attempts
	if l.bo == nil {
		l.bo = backoff.NewExponentialBackOff()
		l.bo.InitialInterval = r.opts.BackoffInitial
		l.bo.MaxInterval = r.opts.BackoffMax
		l.bo.MaxElapsedTime = 0
		l.bo.Reset()
	}
	pause := l.bo.NextBackOff()
	r.mu.Unlock()
	if attempts < r.opts.WriteRetries {
		level := zerolog.InfoLevel
		if we.Kind == sinks.Behind {
			level = zerolog.DebugLevel
		}
		r.logFailure(level, l, rest, we, "retrying write")
		for _, it := range rest {
			if it.skip == nil {
				it.ds[0].Sub.Metrics.Retried.Inc()
			}
		}
		r.requeue(l, rest)
		return pause
	}
	if rest = r.realItems(rest); len(rest) == 0 {
		return 0
	}
	r.logFailure(zerolog.WarnLevel, l, rest, we, "write keeps failing; handing events back to the source for redelivery")
	for _, it := range rest {
		for _, d := range it.ds {
			d.Sub.Metrics.Failed.Inc()
		}
	}
	r.mu.Lock()
	l.attempts = 0
	l.bo.Reset()
	r.mu.Unlock()
	r.nack(deliveries(rest), esdb.NackActionRetry, "ditto: "+we.Reason)
	return 0
}

// park nacks rest with park and the reason of we.
func (r *Replicator) park(l *lane, rest []*item, we *sinks.WriteError) {
	r.logFailure(zerolog.WarnLevel, l, rest, we, "parking events")
	for _, it := range rest {
		for _, d := range it.ds {
			d.Sub.Metrics.Parked.Inc()
			d.Sub.Metrics.Failed.Inc()
		}
	}
	r.nack(deliveries(rest), esdb.NackActionPark, "ditto: "+we.Reason)
}

// conflicted applies the conflict policy to rest, events that the
// destination stream refused as diverged (we). It returns nil once they are
// settled; else the events still to settle, with the failure of the
// conflicts stream's write, which the caller retries like any other.
func (r *Replicator) conflicted(ctx context.Context, l *lane, rest []*item, we *sinks.WriteError) ([]*item, *sinks.WriteError) {
	count := func(p conflict.Policy, items []*item) {
		for _, it := range items {
			for _, d := range it.ds {
				d.Sub.Metrics.Conflicts[p.String()].Inc()
			}
		}
	}
	switch r.opts.Conflicts {
	case conflict.Skip:
		r.logFailure(zerolog.WarnLevel, l, rest, we, "skipping events of a diverged stream (DITTO_CONFLICT_POLICY=skip)")
		count(conflict.Skip, rest)
		r.ack(deliveries(rest))
		return nil, nil
	case conflict.Stream:
		records := make([]sinks.Event, 0, len(rest))
		var unrecordable []*item
		kept := rest[:0:0]
		for _, it := range rest {
			rec, err := conflict.Record(it.ev, l.stream, we.Reason)
			if err != nil {
				unrecordable = append(unrecordable, it)
				continue
			}
			records = append(records, rec)
			kept = append(kept, it)
		}
		if len(unrecordable) > 0 {
			// Nothing is lost: parked, with both reasons.
			count(conflict.Park, unrecordable)
			r.park(l, unrecordable, &sinks.WriteError{Kind: sinks.Conflict,
				Reason: we.Reason + "; its metadata is not a JSON object, which cannot carry the reason into the conflicts stream " + r.opts.ConflictStream})
		}
		if len(kept) == 0 {
			return nil, nil
		}
		if err := r.sink.Write(ctx, r.opts.ConflictStream, records); err != nil {
			cwe := sinks.Classify(err)
			reason := "writing the conflicts stream " + r.opts.ConflictStream + ": " + cwe.Reason
			if cwe.Kind == sinks.Permanent || cwe.Kind == sinks.Conflict {
				count(conflict.Park, kept)
				r.park(l, kept, &sinks.WriteError{Kind: sinks.Conflict, Reason: we.Reason + "; " + reason, Err: cwe.Err})
				return nil, nil
			}
			// Its written prefix is recognised when written again.
			return kept, &sinks.WriteError{Kind: sinks.Transient, Reason: reason, Err: cwe.Err}
		}
		r.logFailure(zerolog.WarnLevel, l, kept, we, "recorded events of a diverged stream in the conflicts stream "+r.opts.ConflictStream)
		count(conflict.Stream, kept)
		r.ack(deliveries(kept))
		return nil, nil
	}
	count(conflict.Park, rest)
	r.park(l, rest, we)
	return nil, nil
}

func (r *Replicator) logFailure(level zerolog.Level, l *lane, rest []*item, we *sinks.WriteError, msg string) {
	e := r.log.WithLevel(level)
	if !e.Enabled() {
		return
	}
	first := rest[0]
	for _, it := range rest {
		if it.skip == nil {
			first = it
			break
		}
	}
	e.Str("stream", l.stream).Uint64("from", first.ev.Number).Uint64("to", rest[len(rest)-1].ev.Number).
		Str("originalStream", first.ev.Stream).
		Str("eventId", first.ev.ID.String()).Str("subscription", first.ds[0].Sub.String()).
		Uint64("originalNumber", first.ds[0].OriginalNumber()).
		Str("kind", we.Kind.String()).Str("reason", we.Reason).AnErr("error", we.Err).Msg(msg)
}

// requeue puts items back into the lane's pending events.
func (r *Replicator) requeue(l *lane, items []*item) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, it := range items {
		for _, d := range it.ds {
			l.add(it.ev, d, it.skip)
		}
	}
}

func (r *Replicator) ack(ds []*consumer.Delivery) {
	if err := consumer.Ack(ds); err != nil {
		// The connection dropped: the source redelivers these events and
		// the sink recognises them as written.
		r.log.Debug().Err(err).Int("events", len(ds)).Msg("ack not delivered; events will be redelivered")
	}
	r.settled(len(ds))
}

func (r *Replicator) nack(ds []*consumer.Delivery, action esdb.NackAction, reason string) {
	if err := consumer.Nack(ds, action, reason); err != nil {
		r.log.Debug().Err(err).Int("events", len(ds)).Msg("nack not delivered; events will be redelivered")
	}
	r.settled(len(ds))
}

func (r *Replicator) settled(n int) {
	r.mu.Lock()
	// Deliveries that bypass lanes (unresolved, read-only) were never counted.
	r.inflight -= n
	if r.inflight < 0 {
		r.inflight = 0
	}
	r.m.InFlight.Set(float64(r.inflight))
	r.mu.Unlock()
}

func deliveries(items []*item) []*consumer.Delivery {
	var ds []*consumer.Delivery
	for _, it := range items {
		ds = append(ds, it.ds...)
	}
	return ds
}

// wait applies the throttle: writes of the whole process are at least
// Throttle apart.
func (r *Replicator) wait(ctx context.Context) {
	if r.opts.Throttle <= 0 {
		return
	}
	r.throttle.Lock()
	now := time.Now()
	at := r.next
	if at.Before(now) {
		at = now
	}
	r.next = at.Add(r.opts.Throttle)
	r.throttle.Unlock()
	t := time.NewTimer(time.Until(at))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// knownDivergence returns a Conflict error if stream is known to have
// diverged at or before event number n.
func (r *Replicator) knownDivergence(stream string, n uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.diverged[stream]
	if !ok || n < d.at {
		return nil
	}
	if time.Now().After(d.until) {
		delete(r.diverged, stream)
		return nil
	}
	return &sinks.WriteError{Kind: sinks.Conflict, Reason: d.reason}
}

func (r *Replicator) markDiverged(stream string, at uint64, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d, ok := r.diverged[stream]; ok && d.at <= at {
		return
	}
	if len(r.diverged) >= maxDivergences {
		clear(r.diverged)
	}
	r.diverged[stream] = divergence{at: at, reason: reason, until: time.Now().Add(divergenceTTL)}
}
