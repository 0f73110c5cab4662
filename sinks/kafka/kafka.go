// Package kafka produces events to Kafka topics with franz-go: one record
// per event, keyed by its original stream so that a stream keeps to one
// partition and its order, acked on the source only once the cluster
// confirmed it.
package kafka

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ditto-replicator/ditto/sinks"
)

const (
	formatRaw      = "raw"
	formatEnvelope = "envelope"
)

// defaultWriters is DITTO_WRITERS' default with this sink. A write waits
// for its records' acks; the client gathers the records of every write in
// flight into one produce request per broker, so more streams written at
// once means fewer, fuller requests (see bench scenario f).
const defaultWriters = 128

// Header names. Where KurrentDB's own Kafka sink connector has a header for
// the same thing, its name is used, so that consumers of either read the
// same headers; the rest are ditto's.
const (
	HeaderID          = "esdb-record-id"              // event id, a UUID
	HeaderStream      = "esdb-record-stream-id"       // original stream
	HeaderNumber      = "esdb-record-stream-revision" // event number in it, decimal
	HeaderCreated     = "esdb-record-timestamp"       // created, RFC 3339 UTC
	HeaderType        = "esdb-record-schema-subject"  // event type
	HeaderContentType = "ditto-content-type"          // application/json or application/octet-stream
	HeaderMetadata    = "ditto-metadata"              // the event's metadata bytes, unchanged
)

// headersPerRecord is how many headers every record carries.
const headersPerRecord = 7

// Sink produces to one franz-go client, shared by every write.
type Sink struct {
	client     *kgo.Client
	topics     *topicSpec
	envelope   bool
	autoCreate bool
	maxBytes   int
	brokers    string
	log        zerolog.Logger
	observe    func(string, time.Duration)
	records    *prometheus.CounterVec
	// ok, transient and permanent are records' children, looked up once.
	ok, transient, permanent prometheus.Counter

	mu         sync.Mutex
	missing    map[string]bool // topics the cluster said it does not have
	hasMissing atomic.Bool
}

// Open connects the client. A fixed topic the cluster does not have is an
// error (exit code 1) unless auto-creation is on; a cluster that does not
// answer yet is not: ditto waits for it, /health/ready saying why.
func Open(ctx context.Context, s *Settings, env sinks.Env) (*Sink, error) {
	topics, err := parseTopic(s.Topic)
	if err != nil {
		return nil, fmt.Errorf("DITTO_KAFKA_TOPIC: %w", err)
	}
	opts, err := s.clientOptions()
	if err != nil {
		return nil, err
	}
	opts = append(opts, kgo.WithLogger(newLogger(env.Log)))
	client, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	k := &Sink{
		client: client, topics: topics, envelope: s.Format == formatEnvelope, autoCreate: s.AutoCreateTopics,
		maxBytes: s.MaxMessageBytes, brokers: s.Brokers, log: env.Log, observe: env.Observe,
		missing: map[string]bool{},
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ditto", Subsystem: "kafka", Name: "records_total",
			Help: "Records produced to Kafka, by result: ok, transient (retried) or permanent (parked).",
		}, []string{"result"}),
	}
	k.ok, k.transient, k.permanent = k.records.WithLabelValues("ok"), k.records.WithLabelValues("transient"), k.records.WithLabelValues("permanent")
	if k.observe == nil {
		k.observe = func(string, time.Duration) {}
	}
	if env.Metrics != nil {
		buffered := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "ditto", Subsystem: "kafka", Name: "buffered_records",
			Help: "Records handed to the Kafka client and not yet confirmed or failed.",
		}, func() float64 { return float64(client.BufferedProduceRecords()) })
		for _, c := range []prometheus.Collector{k.records, buffered} {
			if err := env.Metrics.Register(c); err != nil {
				client.Close()
				return nil, fmt.Errorf("kafka metrics: %w", err)
			}
		}
	}
	env.Log.Info().Str("brokers", s.Brokers).Str("topic", s.Topic).Str("format", s.Format).Str("compression", s.Compression).
		Str("saslMechanism", s.SASLMechanism).Bool("tls", s.tlsOn()).Msg("connecting to Kafka")
	if topics.fixed != "" {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := k.check(cctx)
		cancel()
		if sinks.IsFatal(err) {
			client.Close()
			return nil, err
		}
		if err != nil {
			env.Log.Warn().Err(err).Msg("Kafka not reachable yet; retrying")
		}
	}
	return k, nil
}

// Ready asks the cluster for its metadata (and the fixed topic's). A
// cluster that does not answer is not ready; rejected credentials and a
// missing fixed topic are fatal; missing templated topics are named.
func (k *Sink) Ready(ctx context.Context) error {
	if err := k.check(ctx); err != nil {
		return err
	}
	if !k.hasMissing.Load() {
		return nil
	}
	// Asked again, so that a topic created since is found even if none of
	// its events is written again (the source may have parked them).
	req := kmsg.NewPtrMetadataRequest()
	for _, name := range k.missingTopics() {
		t := kmsg.NewMetadataRequestTopic()
		t.Topic = kmsg.StringPtr(name)
		req.Topics = append(req.Topics, t)
	}
	if resp, err := req.RequestWith(ctx, k.client); err == nil {
		for _, t := range resp.Topics {
			if t.ErrorCode == 0 && t.Topic != nil {
				k.found(*t.Topic)
			}
		}
	}
	names := k.missingTopics()
	if len(names) == 0 {
		return nil
	}
	return fmt.Errorf("topic %s does not exist on the cluster: its events wait; create it or set DITTO_KAFKA_AUTO_CREATE_TOPICS=true", strings.Join(names, ", "))
}

// check sends one metadata request.
func (k *Sink) check(ctx context.Context) error {
	req := kmsg.NewPtrMetadataRequest()
	req.Topics = []kmsg.MetadataRequestTopic{} // none: brokers only
	if k.topics.fixed != "" {
		t := kmsg.NewMetadataRequestTopic()
		t.Topic = kmsg.StringPtr(k.topics.fixed)
		req.Topics = append(req.Topics, t)
		req.AllowAutoTopicCreation = k.autoCreate
	}
	resp, err := req.RequestWith(ctx, k.client)
	if err != nil {
		if errors.Is(err, kerr.SaslAuthenticationFailed) || errors.Is(err, kerr.IllegalSaslState) || errors.Is(err, kerr.UnsupportedSaslMechanism) {
			return sinks.Fatal(fmt.Errorf("DITTO_KAFKA_SASL_USERNAME/DITTO_KAFKA_SASL_PASSWORD: the cluster rejected the credentials: %w", err))
		}
		return fmt.Errorf("Kafka brokers %s not reachable: %w", k.brokers, err)
	}
	for _, t := range resp.Topics {
		err := kerr.ErrorForCode(t.ErrorCode)
		switch {
		case err == nil:
		case errors.Is(err, kerr.UnknownTopicOrPartition) && !k.autoCreate:
			return sinks.Fatal(fmt.Errorf("DITTO_KAFKA_TOPIC=%s: the topic does not exist on the cluster; create it, or set DITTO_KAFKA_AUTO_CREATE_TOPICS=true", k.topics.fixed))
		default:
			return fmt.Errorf("DITTO_KAFKA_TOPIC=%s: %w", k.topics.fixed, err)
		}
	}
	return nil
}

// Close closes the client; records not yet confirmed fail (their events
// were not acked and come again).
func (k *Sink) Close() error {
	k.client.Close()
	return nil
}

// write is one Write's records and their outcomes, filled in by the
// client's promises.
type write struct {
	mu   sync.Mutex
	left int
	done chan struct{}
	errs []error
	fin  []bool
}

func (w *write) finish(i int, err error) {
	w.mu.Lock()
	w.errs[i], w.fin[i] = err, true
	w.left--
	if w.left == 0 {
		close(w.done)
	}
	w.mu.Unlock()
}

// Write produces every event as one record and waits until the cluster has
// confirmed or refused each. With the idempotent producer the records of a
// partition land in order even through retries, and a refused record fails
// those after it in its partition too; Written counts the confirmed records
// before the first that is not. A cluster that does not answer holds the
// write (the client retries) until it answers or ditto stops.
func (k *Sink) Write(ctx context.Context, stream string, events []sinks.Event) error {
	if len(events) == 0 {
		return nil
	}
	topic, err := k.topics.topic(stream)
	if err != nil {
		k.permanent.Add(float64(len(events)))
		return &sinks.WriteError{Kind: sinks.Permanent, Reason: err.Error()}
	}
	start := time.Now()
	recs, sizes := k.build(topic, stream, events, start)
	w := &write{left: len(recs), done: make(chan struct{}), errs: make([]error, len(recs)), fin: make([]bool, len(recs))}
	for i := range recs {
		k.client.Produce(ctx, &recs[i], func(_ *kgo.Record, err error) { w.finish(i, err) })
	}
	select {
	case <-w.done:
	case <-ctx.Done():
	}
	k.observe("produce", time.Since(start))

	w.mu.Lock()
	defer w.mu.Unlock()
	written := 0
	for written < len(recs) && w.fin[written] && w.errs[written] == nil {
		written++
	}
	if written > 0 {
		k.ok.Add(float64(written))
	}
	if written == len(recs) {
		if k.hasMissing.Load() {
			k.found(topic)
		}
		return nil
	}
	if !w.fin[written] {
		k.transient.Add(float64(len(recs) - written))
		return &sinks.WriteError{Kind: sinks.Transient, Written: written, Reason: "stopping before the cluster confirmed every record", Err: ctx.Err()}
	}
	ferr := w.errs[written]
	kind, reason := classify(ferr, topic, sizes[written], k.maxBytes, len(recs)-written)
	if errors.Is(ferr, kerr.UnknownTopicOrPartition) {
		k.lost(topic)
	}
	if kind == sinks.Permanent {
		k.permanent.Add(float64(len(recs) - written))
	} else {
		k.transient.Add(float64(len(recs) - written))
	}
	return &sinks.WriteError{Kind: kind, Written: written, Reason: reason, Err: ferr}
}

// build builds the records of events: values and headers point into two
// buffers per write rather than a handful of allocations per record.
func (k *Sink) build(topic, stream string, events []sinks.Event, now time.Time) ([]kgo.Record, []int) {
	recs := make([]kgo.Record, len(events))
	sizes := make([]int, len(events))
	headers := make([]kgo.RecordHeader, headersPerRecord*len(events))
	key := []byte(stream)
	// Header values (and envelopes) of all events, then sliced: offsets
	// first, since the buffer moves while it grows.
	size := 0
	for i := range events {
		e := &events[i]
		size += 36 + 20 + len(time.RFC3339Nano) + len(e.Type) + len(e.ContentType)
		if k.envelope {
			size += sinks.EnvelopeSize(e)
		}
	}
	buf := make([]byte, 0, size)
	type span struct{ from, to int }
	spans := make([]span, 6*len(events)) // five header values and an envelope
	si := 0
	mark := func(from int) {
		spans[si] = span{from, len(buf)}
		si++
	}
	for i := range events {
		e := &events[i]
		from := len(buf)
		buf = sinks.AppendUUID(buf, e.ID)
		mark(from)
		from = len(buf)
		buf = strconv.AppendUint(buf, e.Number, 10)
		mark(from)
		from = len(buf)
		buf = e.Created.UTC().AppendFormat(buf, time.RFC3339Nano)
		mark(from)
		from = len(buf)
		buf = append(buf, e.Type...)
		mark(from)
		from = len(buf)
		buf = append(buf, e.ContentType...)
		mark(from)
		from = len(buf)
		if k.envelope {
			buf = sinks.AppendEnvelope(buf, e, now)
		}
		mark(from)
	}
	si = 0
	next := func() []byte {
		s := spans[si]
		si++
		return buf[s.from:s.to:s.to]
	}
	for i := range events {
		e := &events[i]
		// The original stream, with the event's number in it below; the
		// key is the destination stream (they differ under
		// DITTO_STREAM_TEMPLATE).
		streamValue := key
		if e.Stream != stream {
			streamValue = []byte(e.Stream)
		}
		h := headers[i*headersPerRecord : (i+1)*headersPerRecord : (i+1)*headersPerRecord]
		h[0] = kgo.RecordHeader{Key: HeaderID, Value: next()}
		h[1] = kgo.RecordHeader{Key: HeaderStream, Value: streamValue}
		h[2] = kgo.RecordHeader{Key: HeaderNumber, Value: next()}
		h[3] = kgo.RecordHeader{Key: HeaderCreated, Value: next()}
		h[4] = kgo.RecordHeader{Key: HeaderType, Value: next()}
		h[5] = kgo.RecordHeader{Key: HeaderContentType, Value: next()}
		h[6] = kgo.RecordHeader{Key: HeaderMetadata, Value: nonNil(e.Metadata)}
		value := next()
		if !k.envelope {
			value = nonNil(e.Data)
		}
		recs[i] = kgo.Record{Topic: topic, Key: key, Value: value, Headers: h}
		size := len(key) + len(value)
		for _, x := range h {
			size += len(x.Key) + len(x.Value)
		}
		sizes[i] = size
	}
	return recs, sizes
}

// nonNil keeps empty data an empty value: a null value is a deletion
// marker (tombstone) on compacted topics.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// lost and found track the templated topics the cluster does not have, for
// Ready.
func (k *Sink) lost(topic string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.missing[topic] {
		k.log.Warn().Str("topic", topic).Msg("the topic does not exist on the Kafka cluster: its events wait; create it, or set DITTO_KAFKA_AUTO_CREATE_TOPICS=true")
	}
	k.missing[topic] = true
	k.hasMissing.Store(true)
}

// missingTopics returns the topics the cluster said it does not have,
// sorted.
func (k *Sink) missingTopics() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	names := make([]string, 0, len(k.missing))
	for t := range k.missing {
		names = append(names, t)
	}
	sort.Strings(names)
	return names
}

func (k *Sink) found(topic string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.missing, topic)
	k.hasMissing.Store(len(k.missing) > 0)
}

// batchSizes matches the sizes franz-go adds to a MESSAGE_TOO_LARGE that a
// broker returned for a whole record batch.
var batchSizes = regexp.MustCompile(`uncompressed_bytes=(\d+), compressed_bytes=`)

// batchOverhead bounds what a record batch of one record adds to the
// record's key, value and headers: the batch header (61 bytes), the
// record's framing and each header's two lengths. Any second record of ours
// adds more than this (its header names alone are over 100 bytes).
const batchOverhead = 61 + 40 + 10*headersPerRecord

// classify decides what a refused record means for its event: permanent
// (parked with the reason) for a record too large, a topic ditto may not
// write and a topic name the cluster rejects; transient (retried) for
// everything else, including a topic that does not exist (yet). left is how
// many records of the write are unconfirmed from this one on.
//
// A broker refuses a whole record batch as too large, and franz-go then
// fails every record buffered for that partition, those of other streams
// too. A write of several records is isolated by the replicator anyway (it
// writes them one by one); a single record is blamed only if the refused
// batch held nothing else, else it is retried.
func classify(err error, topic string, size, maxBytes, left int) (sinks.Kind, string) {
	switch {
	case errors.Is(err, kerr.MessageTooLarge):
		m := batchSizes.FindStringSubmatch(err.Error())
		if m == nil {
			return sinks.Permanent, fmt.Sprintf("the record of %d bytes (key, value and headers) is larger than DITTO_KAFKA_MAX_MESSAGE_BYTES=%d allows: %v", size, maxBytes, err)
		}
		batch, _ := strconv.Atoi(m[1])
		if left > 1 || batch <= size+batchOverhead {
			return sinks.Permanent, fmt.Sprintf("topic %s refused the record of %d bytes as larger than its max.message.bytes: %v", topic, size, err)
		}
		return sinks.Transient, fmt.Sprintf("topic %s refused a batch of %d bytes holding this record and others as too large", topic, batch)
	case errors.Is(err, kerr.TopicAuthorizationFailed):
		return sinks.Permanent, fmt.Sprintf("not authorised to write to topic %s: %v", topic, err)
	case errors.Is(err, kerr.InvalidTopicException):
		return sinks.Permanent, fmt.Sprintf("the cluster does not accept topic %s: %v", topic, err)
	case errors.Is(err, kerr.UnknownTopicOrPartition):
		return sinks.Transient, fmt.Sprintf("topic %s does not exist on the cluster; create it, or set DITTO_KAFKA_AUTO_CREATE_TOPICS=true", topic)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return sinks.Transient, "stopping before the cluster confirmed every record"
	}
	return sinks.Transient, fmt.Sprintf("producing to topic %s failed", topic)
}

// logger passes franz-go's log lines to ditto's log: its errors as
// warnings; its warnings (every failed request while a broker is away) only
// at debug level, since /health/ready and the write retries say it already.
type logger struct{ log zerolog.Logger }

func newLogger(l zerolog.Logger) kgo.Logger { return logger{log: l} }

func (l logger) Level() kgo.LogLevel {
	if l.log.GetLevel() <= zerolog.DebugLevel {
		return kgo.LogLevelWarn
	}
	return kgo.LogLevelError
}

func (l logger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	e := l.log.Debug()
	if level <= kgo.LogLevelError {
		e = l.log.Warn()
	}
	e.Fields(keyvals).Msg("kafka client: " + msg)
}

var _ sinks.Readier = (*Sink)(nil)
