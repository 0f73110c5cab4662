package main

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	streamspb "github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/emptypb"

	dittoconfig "github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/consumer"
	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/metrics"
)

// pollEvery is how often the destination is polled for progress; the
// measured time is late by at most this much.
const pollEvery = 5 * time.Millisecond

// progress is what waitCount observed.
type progress struct {
	first time.Time // first event visible
	done  time.Time // all events visible
}

// destinationEvents is the number of events in the destination's $ce-bench,
// which the test server maintains in the same commit as the appended event.
func destinationEvents(store *esdbtest.Store) int64 {
	return store.LastEventNumber("$ce-"+category) + 1
}

// waitCount polls count, the events written so far, until it reaches want.
// It fails when check returns an error (ditto exited), when nothing moves
// for stall, or after limit. poll, if not nil, sees every count.
func waitCount(ctx context.Context, count func() int64, want int, limit, stall time.Duration, check func() error, poll func(time.Time, int64)) (progress, error) {
	var p progress
	start := time.Now()
	last, lastMove := int64(0), start
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for i := 0; ; i++ {
		n := count()
		now := time.Now()
		if poll != nil {
			poll(now, n)
		}
		if n > 0 && p.first.IsZero() {
			p.first = now
		}
		if n >= int64(want) {
			p.done = now
			return p, nil
		}
		if n != last {
			last, lastMove = n, now
		}
		if now.Sub(lastMove) > stall {
			return p, fmt.Errorf("no progress for %s at %d of %d events", stall, n, want)
		}
		if now.Sub(start) > limit {
			return p, fmt.Errorf("not done within %s: %d of %d events", limit, n, want)
		}
		if i%20 == 0 && check != nil {
			if err := check(); err != nil {
				return p, err
			}
		}
		select {
		case <-ctx.Done():
			return p, ctx.Err()
		case <-t.C:
		}
	}
}

// baseline1Result is the reference algorithm's measured rate.
type baseline1Result struct {
	events  int
	elapsed time.Duration
	sampled bool // stopped before the end of the workload
}

// appendEach is baseline 1's write into an EventStore destination: the
// event appended to its original stream with expected version n-1.
func appendEach(dst *esdb.Client) func(context.Context, *esdb.RecordedEvent) error {
	return func(ctx context.Context, rec *esdb.RecordedEvent) error {
		data := esdb.EventData{EventID: rec.EventID, EventType: rec.EventType, ContentType: esdb.ContentTypeJson, Data: rec.Data, Metadata: rec.UserMetadata}
		if _, err := dst.AppendToStream(ctx, rec.StreamID, esdb.AppendToStreamOptions{ExpectedRevision: expectedBefore(rec.EventNumber)}, data); err != nil {
			return fmt.Errorf("appending %d@%s: %w", rec.EventNumber, rec.StreamID, err)
		}
		return nil
	}
}

// baseline1 is benfoster/ditto's algorithm, the reference, with write as
// the write of each event (appendEach, or a Kinesis PutRecord): one
// persistent subscription connection with buffer size 10; for each event,
// in order, one write of that single event, then an ack; nothing
// concurrent. It stops after sample events or maxTime, whichever comes
// first (the rate is what matters), and reports how many it wrote and in
// how long, from subscribing to the last ack.
func baseline1(ctx context.Context, source, group string, sample int, maxTime time.Duration, write func(context.Context, *esdb.RecordedEvent) error) (baseline1Result, error) {
	var res baseline1Result
	src, err := newClient(source)
	if err != nil {
		return res, err
	}
	defer src.Close()
	ctx, cancel := context.WithTimeout(ctx, maxTime+30*time.Second)
	defer cancel()

	start := time.Now()
	sub, err := src.SubscribeToPersistentSubscription(ctx, "$ce-"+category, group, esdb.SubscribeToPersistentSubscriptionOptions{BufferSize: 10})
	if err != nil {
		return res, fmt.Errorf("baseline 1: subscribing: %w", err)
	}
	// Recv takes no context: close the subscription when ctx ends.
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			sub.Close()
		case <-stopped:
		}
	}()
	defer sub.Close()
	for res.events < sample {
		if time.Since(start) > maxTime {
			res.sampled = true
			break
		}
		ev := sub.Recv()
		if ev.SubscriptionDropped != nil {
			return res, fmt.Errorf("baseline 1: subscription dropped after %d events: %w", res.events, ev.SubscriptionDropped.Error)
		}
		if ev.EventAppeared == nil || ev.EventAppeared.Event.Event == nil {
			continue
		}
		if err := write(ctx, ev.EventAppeared.Event.Event); err != nil {
			return res, fmt.Errorf("baseline 1: %w", err)
		}
		if err := sub.Ack(ev.EventAppeared.Event); err != nil {
			return res, fmt.Errorf("baseline 1: ack: %w", err)
		}
		res.events++
	}
	res.elapsed = time.Since(start)
	return res, nil
}

// sourceLimit is the source's own limit (baseline 3): the workload read
// through a group of its own with ditto's consumer, bufferSize events in
// flight, acked in hundreds (or whole buffers, if smaller) and written
// nowhere. Its CPU per event is what a replicator pays on this machine
// before it writes anything: the source's deliveries, receiving them and
// acking them. The time runs from connecting, which takes about 5 ms of
// CPU: 0.05 µs per event of (a).
func sourceLimit(ctx context.Context, source, group string, events, bufferSize int, limit time.Duration) (time.Duration, error) {
	conf, err := esdb.ParseConnectionString(source)
	if err != nil {
		return 0, err
	}
	client, err := newClient(source)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	start := time.Now()
	c := consumer.New(client, []dittoconfig.Subscription{{Stream: "$ce-" + category, Group: group}}, metrics.New(),
		consumer.Options{Config: conf, BufferSize: bufferSize}, zerolog.Nop())
	defer c.Close()
	ackEvery := min(rawBatch, bufferSize)
	out := make(chan *consumer.Delivery, ackEvery)
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx, out) }()
	acks := make([]*consumer.Delivery, 0, ackEvery)
	for n := 0; n < events; n++ {
		select {
		case d := <-out:
			acks = append(acks, d)
		case err := <-ran:
			return 0, fmt.Errorf("baseline 3: the consumer stopped after %d events: %w", n, err)
		case <-ctx.Done():
			return 0, fmt.Errorf("baseline 3: %d of %d events within %s", n, events, limit)
		}
		if len(acks) == ackEvery || n == events-1 {
			if err := consumer.Ack(acks); err != nil {
				return 0, fmt.Errorf("baseline 3: ack: %w", err)
			}
			acks = acks[:0]
		}
	}
	return time.Since(start), nil
}

// baseline2 is the destination's own limit: the workload appended straight
// to a fresh destination, batch events per append (expected revision n-1),
// by writers concurrent writers, each taking whole streams so that a
// stream's batches stay in order. No subscription is involved. A workload
// of one stream therefore has one writer. With batchAppend the appends go
// through Streams.BatchAppend, one gRPC stream per writer, else through the
// client's Append.
func baseline2(ctx context.Context, destination string, w workload, batch, writers int, batchAppend bool, limit time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	open, closeAll, err := rawAppenders(ctx, destination, batchAppend)
	if err != nil {
		return 0, err
	}
	defer closeAll()
	// Warm the connection up so that connecting is not measured.
	warm, err := open()
	if err != nil {
		return 0, err
	}
	if err := warm(ctx, "warmup-1", 0, []esdb.EventData{{EventID: uuid.New(), EventType: "warmup", ContentType: esdb.ContentTypeJson, Data: []byte("{}")}}); err != nil {
		return 0, fmt.Errorf("baseline 2: warm-up append: %w", err)
	}
	appenders := make([]rawAppender, min(writers, w.streams))
	for i := range appenders {
		if appenders[i], err = open(); err != nil {
			return 0, err
		}
	}
	streams := make(chan int, w.streams)
	for s := 0; s < w.streams; s++ {
		streams <- s
	}
	close(streams)
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	start := time.Now()
	for _, appendBatch := range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]esdb.EventData, 0, batch)
			for s := range streams {
				n := w.perStream(s)
				for from := 0; from < n; from += batch {
					if ctx.Err() != nil {
						return
					}
					buf = buf[:0]
					for k := from; k < min(from+batch, n); k++ {
						buf = append(buf, w.eventData(w.indexOf(s, k)))
					}
					if err := appendBatch(ctx, w.stream(s), uint64(from), buf); err != nil {
						err = fmt.Errorf("baseline 2: appending %s from %d: %w", w.stream(s), from, err)
						firstErr.CompareAndSwap(nil, &err)
						cancel()
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if e := firstErr.Load(); e != nil {
		return 0, *e
	}
	if ctx.Err() != nil {
		return 0, fmt.Errorf("baseline 2: not done within %s", limit)
	}
	return elapsed, nil
}

// rawAppender appends events, the numbers from on of one stream, as one
// write with expected revision from-1.
type rawAppender func(ctx context.Context, stream string, from uint64, events []esdb.EventData) error

// rawAppenders returns a maker of appenders to destination, each for one
// writer, and a function closing them all.
func rawAppenders(ctx context.Context, destination string, batchAppend bool) (open func() (rawAppender, error), closeAll func(), err error) {
	if !batchAppend {
		dst, err := newClient(destination)
		if err != nil {
			return nil, nil, err
		}
		return func() (rawAppender, error) {
			return func(ctx context.Context, stream string, from uint64, events []esdb.EventData) error {
				_, err := dst.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: expectedBefore(from)}, events...)
				return err
			}, nil
		}, func() { dst.Close() }, nil
	}
	conf, err := esdb.ParseConnectionString(destination)
	if err != nil {
		return nil, nil, err
	}
	conn, err := esdbconn.DialLeader(ctx, conf, "")
	if err != nil {
		return nil, nil, err
	}
	return func() (rawAppender, error) {
		bs, err := streamspb.NewStreamsClient(conn).BatchAppend(ctx)
		if err != nil {
			return nil, fmt.Errorf("baseline 2: opening BatchAppend: %w", err)
		}
		return func(ctx context.Context, stream string, from uint64, events []esdb.EventData) error {
			if err := bs.Send(batchAppendReq(stream, from, events)); err != nil {
				return err
			}
			resp, err := bs.Recv()
			if err != nil {
				return err
			}
			if st := resp.GetError(); st != nil {
				return fmt.Errorf("refused: %s", st.GetMessage())
			}
			return nil
		}, nil
	}, func() { conn.Close() }, nil
}

// batchAppendReq is one final BatchAppend request holding events.
func batchAppendReq(stream string, from uint64, events []esdb.EventData) *streamspb.BatchAppendReq {
	opts := &streamspb.BatchAppendReq_Options{StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(stream)}}
	if from == 0 {
		opts.ExpectedStreamPosition = &streamspb.BatchAppendReq_Options_NoStream{NoStream: &emptypb.Empty{}}
	} else {
		opts.ExpectedStreamPosition = &streamspb.BatchAppendReq_Options_StreamPosition{StreamPosition: from - 1}
	}
	req := &streamspb.BatchAppendReq{CorrelationId: protoID(uuid.New()), Options: opts, IsFinal: true}
	for _, e := range events {
		req.ProposedMessages = append(req.ProposedMessages, &streamspb.BatchAppendReq_ProposedMessage{
			Id:             protoID(e.EventID),
			Metadata:       map[string]string{"type": e.EventType, "content-type": "application/json"},
			CustomMetadata: e.Metadata,
			Data:           e.Data,
		})
	}
	return req
}

func protoID(id uuid.UUID) *shared.UUID {
	return &shared.UUID{Value: &shared.UUID_String_{String_: id.String()}}
}

// lagResult is what a steady-rate run measured.
type lagResult struct {
	sent, seen int
	lags       []time.Duration
	sendRate   float64 // events/s actually offered
}

// steadyLag appends w's events to the source at ratePerSec for at most
// duration, one event per append, from writers goroutines (writer k owns the
// streams s with s mod writers == k, so each stream's events stay in order),
// and watches the destination's $ce-bench with a catch-up subscription. An
// event's lag is the time from just before its source append to its arrival
// on that subscription; it is an upper bound of the replication lag, since
// it includes the source append and the destination's delivery. Events sent
// in the first warmup are replicated but left out of the lags (connections
// and lanes warming up are not the steady state).
func steadyLag(ctx context.Context, source, destination string, w workload, ratePerSec float64, writers int, duration, warmup time.Duration) (lagResult, error) {
	var res lagResult
	if w.streams%writers != 0 {
		return res, fmt.Errorf("streams (%d) must be a multiple of writers (%d)", w.streams, writers)
	}
	src, dst, closeClients, err := newClients(source, destination)
	if err != nil {
		return res, err
	}
	defer closeClients()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	sub, err := dst.SubscribeToStream(ctx, "$ce-"+category, esdb.SubscribeToStreamOptions{From: esdb.Start{}, ResolveLinkTos: true})
	if err != nil {
		return res, fmt.Errorf("subscribing to the destination: %w", err)
	}
	defer sub.Close()

	base := time.Now()
	sentAt := make([]atomic.Int64, w.events) // ns since base; 0 = not sent
	arrived := make([]time.Duration, 0, w.events)
	seen := make(chan struct{})
	var seenN atomic.Int64 // arrivals, for the waiting loop below
	var measureFrom atomic.Int64
	measureFrom.Store(math.MaxInt64)
	var subErr error
	var closing atomic.Bool // set before the subscription is closed on purpose
	go func() {
		// Ends when the subscription is closed (deferred above).
		defer close(seen)
		for seenN.Load() < int64(w.events) {
			ev := sub.Recv()
			if ev.SubscriptionDropped != nil {
				if ctx.Err() == nil && !closing.Load() {
					subErr = ev.SubscriptionDropped.Error
				}
				return
			}
			if ev.EventAppeared == nil || ev.EventAppeared.Event == nil {
				continue
			}
			now := time.Since(base)
			i := w.indexFromID(ev.EventAppeared.Event.EventID)
			if i < 0 {
				continue
			}
			if at := sentAt[i].Load(); at > 0 {
				if at >= measureFrom.Load() {
					arrived = append(arrived, now-time.Duration(at))
				}
				seenN.Add(1)
			}
		}
	}()

	// Warm the source connection up before the clock starts.
	if _, err := src.AppendToStream(ctx, "warmup-1", esdb.AppendToStreamOptions{}, esdb.EventData{EventType: "warmup", ContentType: esdb.ContentTypeJson, Data: []byte("{}")}); err != nil {
		return res, fmt.Errorf("warm-up append: %w", err)
	}
	var sent atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	perWriter := ratePerSec / float64(writers)
	start := time.Now()
	measureFrom.Store(int64(start.Sub(base) + warmup))
	for k := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(time.Millisecond)
			defer t.Stop()
			done := 0
			// Writer k sends indices k, k+writers, k+2*writers, …
			for i := k; i < w.events; {
				elapsed := time.Since(start)
				if elapsed > duration || ctx.Err() != nil {
					return
				}
				due := int(elapsed.Seconds() * perWriter)
				for ; done < due && i < w.events; done, i = done+1, i+writers {
					sentAt[i].Store(int64(max(time.Since(base), 1)))
					if _, err := src.AppendToStream(ctx, w.stream(i), esdb.AppendToStreamOptions{ExpectedRevision: expectedBefore(w.number(i))}, w.eventData(i)); err != nil {
						err = fmt.Errorf("source append %d: %w", i, err)
						firstErr.CompareAndSwap(nil, &err)
						cancel()
						return
					}
					sent.Add(1)
				}
				select {
				case <-t.C:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	wg.Wait()
	offered := time.Since(start)
	res.sent = int(sent.Load())
	res.sendRate = rate(res.sent, offered)
	if e := firstErr.Load(); e != nil {
		return res, *e
	}
	// Give the tail up to 30s to arrive, then stop the subscription.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if seenN.Load() >= sent.Load() || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	closing.Store(true)
	sub.Close()
	<-seen
	if subErr != nil {
		return res, fmt.Errorf("destination subscription dropped: %w", subErr)
	}
	res.lags = arrived
	res.seen = int(seenN.Load())
	if res.seen < res.sent {
		return res, fmt.Errorf("only %d of %d events reached the destination within 30s of the last append", res.seen, res.sent)
	}
	return res, nil
}

// newClients connects to the source and the destination; closeClients
// closes both.
func newClients(source, destination string) (src, dst *esdb.Client, closeClients func(), err error) {
	if src, err = newClient(source); err != nil {
		return nil, nil, nil, err
	}
	if dst, err = newClient(destination); err != nil {
		src.Close()
		return nil, nil, nil, err
	}
	return src, dst, func() { src.Close(); dst.Close() }, nil
}
