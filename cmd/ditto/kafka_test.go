package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/faultproxy"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/sinks"
	"github.com/ditto-replicator/ditto/sinks/kafka"
)

// kafkaEnv is a source test server and a kfake cluster in this process,
// with ditto run as a process between them.
type kafkaEnv struct {
	*env
	cluster *kfake.Cluster
	proxy   *faultproxy.Proxy // in front of the broker, if asked for
}

// newKafkaEnv starts the source and a one-broker kfake cluster with opts
// (topics: kfake.SeedTopics). With proxied, clients reach the broker
// only through a fault proxy: the broker advertises the proxy's address.
func newKafkaEnv(t *testing.T, proxied bool, opts ...kfake.Opt) *kafkaEnv {
	t.Helper()
	src := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	k := &kafkaEnv{env: &env{src: src, srcC: mustClient(t, src.ConnectionString())}}
	opts = append([]kfake.Opt{kfake.NumBrokers(1)}, opts...)
	if proxied {
		opts = append(opts, kfake.ListenFn(func(network, address string) (net.Listener, error) {
			ln, err := net.Listen(network, address)
			if err != nil {
				return nil, err
			}
			if k.proxy, err = faultproxy.Start(ln.Addr().String()); err != nil {
				ln.Close()
				return nil, err
			}
			addr, err := net.ResolveTCPAddr("tcp", k.proxy.Addr())
			if err != nil {
				ln.Close()
				return nil, err
			}
			return advertised{Listener: ln, addr: addr}, nil
		}))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	k.cluster = c
	t.Cleanup(func() {
		c.Close()
		if k.proxy != nil {
			k.proxy.Close()
		}
	})
	return k
}

// advertised is a listener that names another address (the proxy's) as
// its own, which kfake hands to clients in its metadata.
type advertised struct {
	net.Listener
	addr net.Addr
}

func (a advertised) Addr() net.Addr { return a.addr }

func (k *kafkaEnv) brokers() string { return strings.Join(k.cluster.ListenAddrs(), ",") }

// dittoEnv is ditto's environment for the Kafka sink.
func (k *kafkaEnv) dittoEnv(extra map[string]string) map[string]string {
	return baseEnv(k.src.ConnectionString(), "", map[string]string{
		"DITTO_SINK":          "kafka",
		"DITTO_KAFKA_BROKERS": k.brokers(),
		"DITTO_KAFKA_TOPIC":   "events",
	}, extra)
}

// topicReader reads topics from the start and keeps every record.
type topicReader struct {
	client *kgo.Client
	mu     sync.Mutex
	recs   []*kgo.Record
	stop   context.CancelFunc
	done   chan struct{}
}

func (k *kafkaEnv) read(t *testing.T, topics ...string) *topicReader {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.cluster.ListenAddrs()...), kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &topicReader{client: cl, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			r.mu.Lock()
			fs.EachRecord(func(rec *kgo.Record) { r.recs = append(r.recs, rec) })
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
		cl.Close()
	})
	return r
}

func (r *topicReader) records() []*kgo.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*kgo.Record(nil), r.recs...)
}

// distinct counts the different events (stream and number) read so far.
func distinct(recs []*kgo.Record) int {
	seen := map[string]bool{}
	for _, r := range recs {
		seen[string(r.Key)+"@"+headerOf(r, kafka.HeaderNumber)] = true
	}
	return len(seen)
}

// waitDistinct waits until n different events were read.
func (r *topicReader) waitDistinct(t *testing.T, n int) []*kgo.Record {
	t.Helper()
	var recs []*kgo.Record
	testutil.Eventually(t, 90*time.Second, fmt.Sprintf("%d events in Kafka", n), func() bool {
		recs = r.records()
		return distinct(recs) >= n
	})
	return recs
}

func headerOf(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// verifyKafka checks the records against the source: every event present,
// its headers, its value byte for byte (raw: the data; envelope: the
// envelope of the event), all records of a stream in one partition, and
// per-stream order. With duplicates (after a crash or an uncertain write,
// the producer sends the events since the last confirmed one again) order
// means: reading a partition in offset order and skipping every record
// whose number is not above the last one seen for its stream gives the
// source stream exactly. It returns the number of duplicates.
func verifyKafka(t *testing.T, recs []*kgo.Record, source map[string][]*esdb.RecordedEvent, envelope bool) int {
	t.Helper()
	partition := map[string]int32{}
	next := map[string]uint64{}
	dups := 0
	for _, r := range recs {
		stream := string(r.Key)
		evs, ok := source[stream]
		if !ok {
			t.Fatalf("record keyed %q, a stream not on the source", stream)
		}
		if p, ok := partition[stream]; ok && p != r.Partition {
			t.Fatalf("%s in partitions %d and %d", stream, p, r.Partition)
		}
		partition[stream] = r.Partition
		n, err := strconv.ParseUint(headerOf(r, kafka.HeaderNumber), 10, 64)
		if err != nil || n >= uint64(len(evs)) {
			t.Fatalf("%s: record with number %q of %d events", stream, headerOf(r, kafka.HeaderNumber), len(evs))
		}
		switch {
		case n < next[stream]:
			dups++
		case n == next[stream]:
			next[stream]++
		default:
			t.Fatalf("%s: event %d follows %d: out of order or one missing", stream, n, next[stream])
		}
		ev := evs[n]
		want := map[string]string{
			kafka.HeaderID: ev.EventID.String(), kafka.HeaderStream: stream, kafka.HeaderType: ev.EventType,
			kafka.HeaderContentType: ev.ContentType, kafka.HeaderMetadata: string(ev.UserMetadata),
			kafka.HeaderCreated: ev.CreatedDate.UTC().Format(time.RFC3339Nano),
		}
		for h, v := range want {
			if got := headerOf(r, h); got != v {
				t.Fatalf("%s@%d: header %s = %q, want %q", stream, n, h, got, v)
			}
		}
		value := ev.Data
		if envelope {
			var v struct {
				ReplicatedOn time.Time `json:"replicated_on"`
			}
			if err := json.Unmarshal(r.Value, &v); err != nil {
				t.Fatalf("%s@%d: value %q is not an envelope: %v", stream, n, r.Value, err)
			}
			e := sinkEvent(ev)
			value = sinks.AppendEnvelope(nil, &e, v.ReplicatedOn)
		}
		if !bytes.Equal(r.Value, value) {
			t.Fatalf("%s@%d: value\n%q\nwant\n%q", stream, n, r.Value, value)
		}
	}
	for stream, evs := range source {
		if next[stream] != uint64(len(evs)) {
			t.Fatalf("%s: %d of %d events in Kafka", stream, next[stream], len(evs))
		}
	}
	return dups
}

func TestKafkaSinkRaw(t *testing.T) {
	k := newKafkaEnv(t, false, kfake.SeedTopics(4, "events"))
	k.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := k.seed(t, "customer", 20, 10)
	metrics := testutil.FreeAddr(t)
	p := startProcess(t, k.dittoEnv(map[string]string{"DITTO_METRICS_ADDRESS": metrics}))
	r := k.read(t, "events")
	recs := r.waitDistinct(t, 200)
	// Events written while ditto runs arrive too.
	k.append(t, streams[0], 10, 5)
	recs = r.waitDistinct(t, 205)
	if dups := verifyKafka(t, recs, k.sourceEvents(t, streams), false); dups != 0 {
		t.Fatalf("%d duplicates without a crash", dups)
	}
	testutil.Eventually(t, 30*time.Second, "ready, and produce timed", func() bool {
		if code, _ := readyStatus(metrics); code != http.StatusOK {
			return false
		}
		body := scrape(t, metrics)
		return strings.Contains(body, `ditto_io_duration_seconds_count{app="ditto",operation="produce",system="kafka"`) &&
			strings.Contains(body, `ditto_kafka_records_total{result="ok"} 205`)
	})
	stopGracefully(t, p)
}

func TestKafkaSinkEnvelopeWithTopicTemplate(t *testing.T) {
	k := newKafkaEnv(t, false, kfake.SeedTopics(4, "ev-customer", "ev-order"))
	k.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	k.createGroup(t, "$ce-order", "ditto", esdb.ConsumerStrategyPinned)
	streams := append(k.seed(t, "customer", 5, 6), k.seed(t, "order", 5, 6)...)
	p := startProcess(t, k.dittoEnv(map[string]string{
		"DITTO_SUBSCRIPTIONS": "$ce-customer:ditto,$ce-order:ditto",
		"DITTO_KAFKA_TOPIC":   "ev-{category}",
		"DITTO_KAFKA_FORMAT":  "envelope",
	}))
	r := k.read(t, "ev-customer", "ev-order")
	recs := r.waitDistinct(t, 60)
	for _, rec := range recs {
		if want := "ev-" + strings.SplitN(string(rec.Key), "-", 2)[0]; rec.Topic != want {
			t.Fatalf("%s in topic %s, want %s", rec.Key, rec.Topic, want)
		}
	}
	if dups := verifyKafka(t, recs, k.sourceEvents(t, streams), true); dups != 0 {
		t.Fatalf("%d duplicates without a crash", dups)
	}
	stopGracefully(t, p)
}

// TestKafkaSinkClusterAwayForAWhile: the broker's traffic is black-holed
// (connections accepted, nothing answered) while events keep coming; ditto
// reports not ready, parks nothing, and everything arrives once the broker
// answers again, in order and once.
func TestKafkaSinkClusterAwayForAWhile(t *testing.T) {
	k := newKafkaEnv(t, true, kfake.SeedTopics(4, "events"))
	k.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := k.seed(t, "customer", 10, 5)
	metrics := testutil.FreeAddr(t)
	p := startProcess(t, k.dittoEnv(map[string]string{"DITTO_METRICS_ADDRESS": metrics}))
	r := k.read(t, "events")
	r.waitDistinct(t, 50)
	k.proxy.SetBlackhole(true)
	for _, s := range streams {
		k.append(t, s, 5, 5)
	}
	testutil.Eventually(t, 30*time.Second, "/health/ready 503 naming the brokers", func() bool {
		code, body := readyStatus(metrics)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "sink kafka: Kafka brokers "+k.brokers()+" not reachable")
	})
	k.proxy.SetBlackhole(false)
	recs := r.waitDistinct(t, 100)
	if dups := verifyKafka(t, recs, k.sourceEvents(t, streams), false); dups != 0 {
		t.Errorf("%d duplicates after the outage", dups)
	}
	if n := len(parked(t, k.srcC, "$ce-customer", "ditto")); n != 0 {
		t.Fatalf("%d events parked during the outage", n)
	}
	testutil.Eventually(t, 30*time.Second, "ready again", func() bool { code, _ := readyStatus(metrics); return code == http.StatusOK })
	stopGracefully(t, p)
}

// TestKafkaSinkKilledMidRunLosesNothing kills ditto with SIGKILL three
// times while the source keeps receiving writes. Every event reaches Kafka
// in order; events produced but not yet acked on the source when ditto died
// come again (duplicates, counted), after the ones before them.
func TestKafkaSinkKilledMidRunLosesNothing(t *testing.T) {
	k := newKafkaEnv(t, false, kfake.SeedTopics(4, "events"))
	k.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	const streams, perStream = 40, 60
	names, writerDone := writeInChunks(k.srcC, streams, perStream, 5, testEvents)
	env := k.dittoEnv(map[string]string{"DITTO_BUFFER_SIZE": "50", "DITTO_BATCH_MAX_EVENTS": "7"})
	r := k.read(t, "events")
	seen := 0
	for kill := 0; kill < 3; kill++ {
		p := startProcess(t, env)
		target := min(seen+100, streams*perStream)
		r.waitDistinct(t, target)
		p.kill()
		seen = distinct(r.records())
	}
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	p := startProcess(t, env)
	recs := r.waitDistinct(t, streams*perStream)
	dups := verifyKafka(t, recs, k.sourceEvents(t, names), false)
	t.Logf("%d records for %d events: %d duplicates after three kills", len(recs), streams*perStream, dups)
	stopGracefully(t, p)
}

// --- bad input -------------------------------------------------------------

// testKafkaTopicUnknown: a fixed topic the cluster does not have stops ditto
// at start, naming it.
func testKafkaTopicUnknown(t *testing.T) {
	k := newKafkaEnv(t, false, kfake.SeedTopics(4, "events"))
	p := startProcess(t, k.dittoEnv(map[string]string{"DITTO_KAFKA_TOPIC": "no-such-topic"}))
	if code := p.exitCode(t); code != 1 {
		t.Fatalf("exit code %d, want 1:\n%s", code, p.output)
	}
	want := "DITTO_KAFKA_TOPIC=no-such-topic: the topic does not exist on the cluster; create it, or set DITTO_KAFKA_AUTO_CREATE_TOPICS=true"
	if !strings.Contains(p.output.String(), want) {
		t.Fatalf("output lacks %q:\n%s", want, p.output)
	}
}

// testKafkaRecordTooLarge: the cluster accepts 4 KiB per batch; an 8 KiB
// event is parked with the cluster's reason, and its stream goes on (Kafka
// has no expected numbers: the next event follows), as do other streams.
func testKafkaRecordTooLarge(t *testing.T) {
	k := newKafkaEnv(t, false, kfake.SeedTopics(4, "events"), kfake.BrokerConfigs(map[string]string{"message.max.bytes": "4096"}))
	k.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	big := "customer-big"
	random := make([]byte, 8192)
	for i := range random {
		random[i] = byte(uuid.New().ID()) // does not compress below 4 KiB either
	}
	appendEvents(t, k.srcC, big, esdb.NoStream{},
		esdb.EventData{EventID: uuid.New(), EventType: "huge", ContentType: esdb.ContentTypeBinary, Data: random},
		esdb.EventData{EventID: uuid.New(), EventType: "after", ContentType: esdb.ContentTypeJson, Data: []byte(`{}`)})
	others := k.seed(t, "customer", 3, 3)
	startProcess(t, k.dittoEnv(nil))
	recs := k.read(t, "events").waitDistinct(t, 10)
	reasons := waitParked(t, k.srcC, 1, "topic events refused the record of")
	if len(reasons) != 1 || !strings.Contains(reasons[0], "MESSAGE_TOO_LARGE") {
		t.Fatalf("park reasons %q: want one, naming MESSAGE_TOO_LARGE", reasons)
	}
	t.Logf("park reason: %q", reasons[0])
	var mine []*kgo.Record
	for _, r := range recs {
		if string(r.Key) != big {
			mine = append(mine, r)
		} else if n := headerOf(r, kafka.HeaderNumber); n != "1" {
			t.Fatalf("%s@%s in Kafka, want only its event 1", big, n)
		}
	}
	verifyKafka(t, mine, k.sourceEvents(t, others), false)
}

// testKafkaTopicInvalid: with DITTO_KAFKA_TOPIC={stream}, a stream whose
// name Kafka refuses as a topic is parked with the reason (never renamed,
// which could merge streams); the other streams carry on.
func testKafkaTopicInvalid(t *testing.T) {
	k := newKafkaEnv(t, false, kfake.AllowAutoTopicCreation())
	k.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	k.append(t, "customer-Zoë", 0, 2)
	k.append(t, "customer-ok", 0, 3)
	startProcess(t, k.dittoEnv(map[string]string{"DITTO_KAFKA_TOPIC": "{stream}", "DITTO_KAFKA_AUTO_CREATE_TOPICS": "true"}))
	waitParked(t, k.srcC, 2, `stream "customer-Zoë" maps to topic "customer-Zoë", which Kafka does not accept`)
	recs := k.read(t, "customer-ok").waitDistinct(t, 3)
	verifyKafka(t, recs, k.sourceEvents(t, []string{"customer-ok"}), false)
}

// TestKafkaSinkStopsWhileClusterAway: a SIGTERM while the broker answers
// nothing stops ditto after DITTO_SHUTDOWN_TIMEOUT (the writes in flight
// give up; their events were not acked and come again), and a ditto started
// once the broker is back delivers everything.
func TestKafkaSinkStopsWhileClusterAway(t *testing.T) {
	k := newKafkaEnv(t, true, kfake.SeedTopics(4, "events"))
	k.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := k.seed(t, "customer", 5, 3)
	metrics := testutil.FreeAddr(t)
	env := k.dittoEnv(map[string]string{"DITTO_SHUTDOWN_TIMEOUT": "1s", "DITTO_METRICS_ADDRESS": metrics})
	p := startProcess(t, env)
	r := k.read(t, "events")
	r.waitDistinct(t, 15)
	k.proxy.SetBlackhole(true)
	for _, s := range streams {
		k.append(t, s, 3, 3)
	}
	testutil.Eventually(t, 30*time.Second, "records waiting on the broker", func() bool {
		body := scrape(t, metrics)
		return strings.Contains(body, "ditto_kafka_buffered_records ") && !strings.Contains(body, "ditto_kafka_buffered_records 0\n")
	})
	stopGracefully(t, p)
	k.proxy.SetBlackhole(false)
	p = startProcess(t, env)
	recs := r.waitDistinct(t, 30)
	verifyKafka(t, recs, k.sourceEvents(t, streams), false)
	stopGracefully(t, p)
}
