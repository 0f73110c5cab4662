// Package kinesis writes each event as one record to an Amazon Kinesis data
// stream, in the JSON envelope of benfoster/ditto's Kinesis image, with the
// original stream id as partition key.
//
// Order: Kinesis keeps the records of one partition key in order within a
// shard, but PutRecords does not promise the order of the records of one
// call, and a call can accept event n+1 while rejecting n. So a call never
// holds two records of one stream: each Write puts its events one at a time
// and waits for each record's outcome before the next, while a shared
// batcher gathers the records of many concurrent Writes (many streams) into
// PutRecords calls of up to 500 records and 5 MiB. A record Kinesis
// rejects is put again, with backoff, before its stream's next event. And
// an event that could not be written at all holds the later events of its
// stream (Behind) until it is: the source redelivers it, and nothing
// overtakes it.
//
// Duplicates: Kinesis has no idempotent put. A record written whose ack did
// not reach the source (a crash, a lost connection, a timed-out call that
// did succeed) is written again on redelivery; consumers deduplicate on
// event_id.
package kinesis

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/sinks"
)

// Kinesis limits (service quotas, not settings).
const (
	maxCallRecords = 500     // records per PutRecords call
	maxCallBytes   = 5 << 20 // data and partition keys per call
	maxRecordBytes = 1 << 20 // data and partition key of one record
	maxKeyChars    = 256     // partition key length, in UTF-16 code units to be safe
)

// Defaults of Options.
const (
	defaultCallsInFlight  = 4
	defaultRecordAttempts = 5
	defaultCallTimeout    = time.Minute
)

// Options tune a Sink; zero values take the defaults.
type Options struct {
	// Stream is the stream's name or ARN (then both are sent, as the API
	// allows).
	Stream string
	// CallsInFlight is the most PutRecords calls at once (default 4).
	// While all are out, records gather for the next call.
	CallsInFlight int
	// RecordAttempts is how often one record is put before a Write gives
	// up on it as Transient, when Kinesis keeps rejecting it in its answer
	// (default 5). Failed calls are retried by the SDK's retryer first.
	RecordAttempts int
	// RecordBackoff is the first pause before a rejected record is put
	// again (default 100ms), doubling up to RecordBackoffMax (default 2s):
	// throughput limits are per shard and second.
	RecordBackoff, RecordBackoffMax time.Duration
	// CallTimeout bounds one PutRecords call with the SDK's retries
	// (default 1m).
	CallTimeout time.Duration
	// Observe records the duration of each call to Kinesis.
	Observe func(operation string, d time.Duration)
	// Metrics registers the sink's counters (nil: not registered).
	Metrics prometheus.Registerer
	Log     zerolog.Logger
}

// Sink writes to one Kinesis stream. It is safe for concurrent Writes of
// different source streams (the replicator writes one stream at a time).
type Sink struct {
	client *kinesis.Client
	id     streamID
	opts   Options
	log    zerolog.Logger

	queue  chan *record  // records waiting for a call
	slots  chan struct{} // one per call in flight
	ctx    context.Context
	cancel context.CancelFunc
	loopWG sync.WaitGroup
	callWG sync.WaitGroup

	// callErr is the last failed call whose error says the stream or the
	// credentials are wrong; a successful call clears it. Ready reports it.
	callErr atomic.Pointer[error]

	heldMu sync.Mutex
	held   map[string]hold // streams with an event that could not be written

	retried, throttled *prometheus.CounterVec
}

// hold is the lowest event number of a stream that failed to be written;
// the stream's later events wait for it.
type hold struct {
	number uint64
	until  time.Time
}

// Holds are forgotten after holdTTL (the source may have parked the event)
// and all at once when more than maxHolds streams are held (bounded memory).
const (
	holdTTL  = 10 * time.Minute
	maxHolds = 100000
)

// record is one event's record on its way through the batcher.
type record struct {
	entry types.PutRecordsRequestEntry
	size  int
	alone bool         // send in a call of its own, to isolate a call's refusal
	done  chan outcome // buffered: the batcher never waits for the Write
}

// outcome is what happened to a record: accepted (zero), rejected in the
// call's answer (code), or the call failed (err).
type outcome struct {
	code, message string
	err           error
}

// New returns a sink writing through client. It starts the batcher; Close
// stops it.
func New(client *kinesis.Client, opts Options) (*Sink, error) {
	id, err := parseStream(opts.Stream)
	if err != nil {
		return nil, err
	}
	if opts.CallsInFlight <= 0 {
		opts.CallsInFlight = defaultCallsInFlight
	}
	if opts.RecordAttempts <= 0 {
		opts.RecordAttempts = defaultRecordAttempts
	}
	if opts.RecordBackoff <= 0 {
		opts.RecordBackoff = 100 * time.Millisecond
	}
	if opts.RecordBackoffMax < opts.RecordBackoff {
		opts.RecordBackoffMax = max(opts.RecordBackoff, 2*time.Second)
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = defaultCallTimeout
	}
	if opts.Observe == nil {
		opts.Observe = func(string, time.Duration) {}
	}
	s := &Sink{
		client: client,
		id:     id,
		opts:   opts,
		log:    opts.Log,
		queue:  make(chan *record, maxCallRecords),
		slots:  make(chan struct{}, opts.CallsInFlight),
		held:   map[string]hold{},
		retried: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ditto_kinesis_records_retried_total",
			Help: "Records put again: by ditto after Kinesis rejected them in a PutRecords answer, or by the SDK's retryer after a failed call; code is Kinesis's error code."}, []string{"code"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ditto_kinesis_records_throttled_total",
			Help: "Records Kinesis refused for throughput, one by one or as a whole throttled call; code is Kinesis's error code."}, []string{"code"}),
	}
	if opts.Metrics != nil {
		for _, c := range []*prometheus.CounterVec{s.retried, s.throttled} {
			if err := opts.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("registering Kinesis metrics: %w", err)
			}
		}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.loopWG.Add(1)
	go func() {
		defer s.loopWG.Done()
		s.loop()
	}()
	return s, nil
}

// Close stops the batcher and abandons calls in flight. The replicator
// calls it after its last Write returned.
func (s *Sink) Close() error {
	s.cancel()
	s.loopWG.Wait()
	s.callWG.Wait()
	return nil
}

// Write puts events, consecutive events of stream, one record each, in
// order: the next event's record is submitted only once the previous one
// is accepted.
func (s *Sink) Write(ctx context.Context, stream string, events []sinks.Event) error {
	if len(events) == 0 {
		return nil
	}
	// Only a Write that starts at or before a hold can lift it: the
	// stream's Writes come one at a time, and a Write that fails holds the
	// stream and returns.
	h, held := s.heldAt(stream)
	if held && events[0].Seq > h {
		return &sinks.WriteError{Kind: sinks.Behind,
			Reason: fmt.Sprintf("event %d of stream %s is not on Kinesis yet; its later events wait for it", h, stream)}
	}
	key := partitionKey(stream)
	// One record (and buffer) carries the events in turn: the next is
	// submitted only once the batcher has handed back the outcome of the
	// last, and the SDK has encoded its data into the call by then.
	r := &record{entry: types.PutRecordsRequestEntry{PartitionKey: aws.String(key)}, done: make(chan outcome, 1)}
	for i := range events {
		e := &events[i]
		data := r.entry.Data[:0]
		if n := sinks.EnvelopeSize(e); cap(data) < n {
			data = make([]byte, 0, n)
		}
		data = sinks.AppendEnvelope(data, e, time.Now())
		var we *sinks.WriteError
		if n := len(data) + len(key); n > maxRecordBytes {
			we = &sinks.WriteError{Kind: sinks.Permanent,
				Reason: fmt.Sprintf("event %d of stream %s is %d bytes as a Kinesis record (envelope and partition key), over Kinesis's limit of %d bytes (1 MiB)",
					e.Number, stream, n, maxRecordBytes)}
		} else {
			r.entry.Data, r.size, r.alone = data, len(data)+len(key), false
			we = s.put(ctx, stream, e, r)
		}
		if we != nil && we.Kind == sinks.Transient {
			we.Written = i
			s.holdAt(stream, e.Seq)
			return we
		}
		// Written, or refused for good (the replicator parks it): either way
		// nothing is left for the stream's later events to wait for.
		if held && e.Seq >= h {
			s.release(stream, e.Seq)
			held = false
		}
		if we != nil {
			we.Written = i
			return we
		}
	}
	return nil
}

// put puts one event's record r until Kinesis accepts it, at most
// RecordAttempts times.
func (s *Sink) put(ctx context.Context, stream string, e *sinks.Event, r *record) *sinks.WriteError {
	var bo *backoff.ExponentialBackOff
	for attempt := 1; ; attempt++ {
		o, err := s.submit(ctx, r)
		if err != nil {
			return &sinks.WriteError{Kind: sinks.Transient, Reason: "Kinesis write abandoned", Err: err}
		}
		if o.err != nil {
			f := classify(o.err, s.id.display())
			if f.invalid && !r.alone {
				// Kinesis refused the whole call; another record of it
				// may be to blame. Put this one on its own.
				r.alone = true
				attempt--
				continue
			}
			kind := sinks.Transient
			if f.invalid {
				kind = sinks.Permanent
			}
			return &sinks.WriteError{Kind: kind, Reason: f.reason, Err: o.err}
		}
		if o.code == "" {
			return nil
		}
		code := knownCode(o.code)
		if isThrottle(o.code) {
			s.throttled.WithLabelValues(code).Inc()
		}
		if attempt >= s.opts.RecordAttempts {
			return &sinks.WriteError{Kind: sinks.Transient,
				Reason: fmt.Sprintf("Kinesis rejected the record of event %d of stream %s %d times, last with %s: %s",
					e.Number, stream, attempt, o.code, o.message)}
		}
		s.retried.WithLabelValues(code).Inc()
		if bo == nil {
			bo = &backoff.ExponentialBackOff{InitialInterval: s.opts.RecordBackoff, RandomizationFactor: 0.5,
				Multiplier: 2, MaxInterval: s.opts.RecordBackoffMax, Clock: backoff.SystemClock}
			bo.Reset()
		}
		t := time.NewTimer(bo.NextBackOff())
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return &sinks.WriteError{Kind: sinks.Transient, Reason: "Kinesis write abandoned", Err: ctx.Err()}
		case <-s.ctx.Done():
			t.Stop()
			return &sinks.WriteError{Kind: sinks.Transient, Reason: "Kinesis sink closed"}
		}
	}
}

// submit hands r to the batcher and waits for its outcome.
func (s *Sink) submit(ctx context.Context, r *record) (outcome, error) {
	select {
	case s.queue <- r:
	case <-ctx.Done():
		return outcome{}, ctx.Err()
	case <-s.ctx.Done():
		return outcome{}, errors.New("the Kinesis sink is closed")
	}
	select {
	case o := <-r.done:
		return o, nil
	case <-ctx.Done():
		// The record may still be written: a duplicate when redelivered.
		return outcome{}, ctx.Err()
	case <-s.ctx.Done():
		return outcome{}, errors.New("the Kinesis sink is closed")
	}
}

// loop is the batcher: it takes a call slot, then every record waiting
// (within the call's limits), and sends them as one call. There is no
// linger: a call goes out as soon as a slot is free, and while every slot
// is busy the next call fills up.
func (s *Sink) loop() {
	var carry *record // taken from the queue but did not fit the last call
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-s.queue:
			case <-s.ctx.Done():
				return
			}
		}
		select {
		case s.slots <- struct{}{}:
		case <-s.ctx.Done():
			return
		}
		batch := []*record{first}
		size := first.size
	gather:
		for !first.alone && len(batch) < maxCallRecords {
			select {
			case r := <-s.queue:
				if r.alone || size+r.size > maxCallBytes {
					carry = r
					break gather
				}
				batch = append(batch, r)
				size += r.size
			default:
				break gather
			}
		}
		s.callWG.Add(1)
		go s.call(batch)
	}
}

// call sends one PutRecords call and hands each record its outcome.
func (s *Sink) call(batch []*record) {
	defer s.callWG.Done()
	defer func() { <-s.slots }()
	entries := make([]types.PutRecordsRequestEntry, len(batch))
	for i, r := range batch {
		entries[i] = r.entry
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.CallTimeout)
	start := time.Now()
	in := &kinesis.PutRecordsInput{Records: entries}
	in.StreamName, in.StreamARN = s.id.names()
	out, err := s.client.PutRecords(ctx, in, s.countRetries(len(batch)))
	cancel()
	s.opts.Observe("put_records", time.Since(start))
	if err == nil && len(out.Records) != len(batch) {
		err = fmt.Errorf("PutRecords answered %d results for %d records", len(out.Records), len(batch))
	}
	if err != nil {
		if f := classify(err, s.id.display()); f.notReady {
			s.callErr.Store(&f.err)
		}
		for _, r := range batch {
			r.done <- outcome{err: err}
		}
		return
	}
	s.callErr.Store(nil)
	for i, r := range batch {
		if res := out.Records[i]; res.ErrorCode != nil {
			r.done <- outcome{code: *res.ErrorCode, message: aws.ToString(res.ErrorMessage)}
			continue
		}
		r.done <- outcome{}
	}
}

// Ready checks that the stream exists and takes writes (ACTIVE or
// UPDATING), and reports a failed call that said the stream or the
// credentials are wrong, until a call succeeds. Without permission for
// DescribeStreamSummary, readiness follows the writes alone.
func (s *Sink) Ready(ctx context.Context) error {
	start := time.Now()
	out, err := s.client.DescribeStreamSummary(ctx, s.id.describeInput())
	s.opts.Observe("describe_stream_summary", time.Since(start))
	switch {
	case err != nil && !isAccessDenied(err):
		return classify(err, s.id.display()).err
	case err == nil:
		switch st := out.StreamDescriptionSummary.StreamStatus; st {
		case types.StreamStatusActive, types.StreamStatusUpdating:
		default:
			return fmt.Errorf("Kinesis stream %s is %s, not ACTIVE", s.id.display(), st)
		}
	}
	if p := s.callErr.Load(); p != nil {
		return *p
	}
	return nil
}

// heldAt returns the number a stream's writes wait for, if any.
func (s *Sink) heldAt(stream string) (uint64, bool) {
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	h, ok := s.held[stream]
	if ok && time.Now().After(h.until) {
		delete(s.held, stream)
		return 0, false
	}
	return h.number, ok
}

// holdAt makes the stream's events after n wait until n is written.
func (s *Sink) holdAt(stream string, n uint64) {
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	if h, ok := s.held[stream]; ok && h.number <= n {
		return
	}
	if len(s.held) >= maxHolds {
		clear(s.held)
	}
	s.held[stream] = hold{number: n, until: time.Now().Add(holdTTL)}
}

// release lifts a stream's hold once the held event (or a later one) is
// written.
func (s *Sink) release(stream string, n uint64) {
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	if h, ok := s.held[stream]; ok && n >= h.number {
		delete(s.held, stream)
	}
}

// partitionKey is the stream id, or, for an id longer than Kinesis takes,
// "sha256:" and the hex digest of it: the same for every event of the
// stream, so its order holds.
func partitionKey(stream string) string {
	n := 0
	for _, r := range stream {
		n++
		if r > 0xFFFF {
			n++ // two UTF-16 code units
		}
	}
	if n <= maxKeyChars && utf8.ValidString(stream) {
		return stream
	}
	sum := sha256.Sum256([]byte(stream))
	return "sha256:" + hex.EncodeToString(sum[:])
}
