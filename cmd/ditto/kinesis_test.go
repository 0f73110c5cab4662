package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/google/uuid"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/kinesalite"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/sinks"
)

// kenv is a source test server and kinesalite with one stream, optionally
// behind a fault proxy that ditto goes through.
type kenv struct {
	*env
	kin    *kinesalite.Server
	direct *kinesis.Client // to kinesalite itself, for the checks
	proxy  *kinesalite.Proxy
	stream string
}

func newKinesisEnv(t *testing.T, shards int32, proxied bool) *kenv {
	t.Helper()
	src := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	k := &kenv{env: &env{src: src, srcC: mustClient(t, src.ConnectionString())}, kin: kinesalite.Start(t), stream: "ditto-events"}
	k.direct = kinesalite.NewClient(k.kin.Endpoint())
	if err := kinesalite.CreateStream(context.Background(), k.direct, k.stream, shards); err != nil {
		t.Fatal(err)
	}
	if proxied {
		p, err := kinesalite.StartProxy(k.kin.Endpoint())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		k.proxy = p
	}
	return k
}

// endpoint is what ditto talks to: the proxy, if any.
func (k *kenv) endpoint() string {
	if k.proxy != nil {
		return k.proxy.Endpoint()
	}
	return k.kin.Endpoint()
}

// dittoEnv is a process environment for ditto from the source to the
// stream, with the AWS variables of the SDK's default chain.
func (k *kenv) dittoEnv(extra map[string]string) map[string]string {
	return baseEnv(k.src.ConnectionString(), "", kinesalite.Env(k.endpoint()), map[string]string{
		"DITTO_SINK":                "kinesis",
		"DITTO_KINESIS_STREAM_NAME": k.stream,
	}, extra)
}

// records reads the whole stream back, failing t on error.
func (k *kenv) records(t *testing.T) []kinesalite.Record {
	t.Helper()
	recs, err := kinesalite.ReadAll(context.Background(), k.direct, k.stream)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// waitRecords waits until the stream holds at least n records.
func (k *kenv) waitRecords(t *testing.T, n int, timeout time.Duration) []kinesalite.Record {
	t.Helper()
	var recs []kinesalite.Record
	testutil.Eventually(t, timeout, fmt.Sprintf("%d records on Kinesis", n), func() bool {
		recs = k.records(t)
		return len(recs) >= n
	})
	return recs
}

// sinkEvents reads streams from the source as the sink sees them.
func (k *kenv) sinkEvents(t *testing.T, streams []string) map[string][]sinks.Event {
	t.Helper()
	out := map[string][]sinks.Event{}
	for s, evs := range k.sourceEvents(t, streams) {
		for _, r := range evs {
			out[s] = append(out[s], sinkEvent(r))
		}
	}
	return out
}

// sinkEvent is a source event as a sink gets it (of a plain copy).
func sinkEvent(r *esdb.RecordedEvent) sinks.Event {
	return sinks.Event{Stream: r.StreamID, Number: r.EventNumber, ID: r.EventID, Type: r.EventType,
		ContentType: r.ContentType, Data: r.Data, Metadata: r.UserMetadata, Created: r.CreatedDate}
}

// recordEnvelope is the part of a record's JSON the checks read.
type recordEnvelope struct {
	EventID      string `json:"event_id"`
	EventNumber  uint64 `json:"event_number"`
	ReplicatedOn string `json:"replicated_on"`
}

// kinesisCheck is what checkRecords found.
type kinesisCheck struct {
	records, duplicates int
}

// checkRecords checks the records against the source events: each record is
// byte for byte the envelope of a source event (with its own replicated_on)
// under its stream's partition key, every source event is there, and the
// records of each partition key are in order (the order of src, which may
// leave events out). With exact, every event is there once, in order.
// Without (after crashes), an event may be written again, so order means: a
// record never runs ahead of its stream, i.e. it is at most one event past
// the furthest of the stream's records before it; so the first occurrences
// are in order with nothing skipped, and a repeat only goes back to an
// event already written.
func checkRecords(t *testing.T, recs []kinesalite.Record, src map[string][]sinks.Event, exact bool) kinesisCheck {
	t.Helper()
	byID := map[string]*sinks.Event{}
	index := map[string]int{} // event id → its place among its stream's events in src
	for s := range src {
		for i := range src[s] {
			byID[src[s][i].ID.String()] = &src[s][i]
			index[src[s][i].ID.String()] = i
		}
	}
	seen := map[string]int{}
	high := map[string]int{} // highest place per key so far; absent = none
	for _, r := range recs {
		var env recordEnvelope
		if err := json.Unmarshal(r.Data, &env); err != nil {
			t.Fatalf("record %s is not JSON: %v: %q", r.SequenceNumber, err, r.Data)
		}
		e := byID[env.EventID]
		if e == nil {
			t.Fatalf("record of an event the source does not have: %s", r.Data)
		}
		on, err := time.Parse(time.RFC3339Nano, env.ReplicatedOn)
		if err != nil {
			t.Fatalf("replicated_on %q: %v", env.ReplicatedOn, err)
		}
		if want := sinks.AppendEnvelope(nil, e, on); !bytes.Equal(r.Data, want) {
			t.Fatalf("record of %s@%d is not its envelope:\n got %s\nwant %s", e.Stream, e.Number, r.Data, want)
		}
		if r.PartitionKey != e.Stream {
			t.Fatalf("partition key %q for an event of %s", r.PartitionKey, e.Stream)
		}
		h, ok := high[e.Stream]
		if !ok {
			h = -1
		}
		if i := index[env.EventID]; i > h+1 || (exact && i != h+1) {
			t.Fatalf("%s: event %d is the record after %d of the stream's events: out of order", e.Stream, e.Number, h+1)
		}
		high[e.Stream] = max(h, index[env.EventID])
		seen[env.EventID]++
	}
	c := kinesisCheck{records: len(recs)}
	for id, e := range byID {
		if seen[id] == 0 {
			t.Fatalf("event %d of %s (%s) is not on Kinesis", e.Number, e.Stream, id)
		}
		c.duplicates += seen[id] - 1
	}
	if exact && c.duplicates > 0 {
		t.Fatalf("%d duplicates without a crash", c.duplicates)
	}
	return c
}

// checkCallsOneRecordPerKey checks that no PutRecords call held two records
// of one stream, and that a refused record (rejected, or in a refused call)
// was the next record its stream sent. It returns the records refused.
func checkCallsOneRecordPerKey(t *testing.T, calls []kinesalite.Call) int {
	t.Helper()
	pending := map[string]string{} // partition key → id of its refused record
	refused := 0
	for i, c := range calls {
		keys := map[string]bool{}
		for j, r := range c.Records {
			if keys[r.PartitionKey] {
				t.Fatalf("call %d holds two records of %s", i, r.PartitionKey)
			}
			keys[r.PartitionKey] = true
			var env recordEnvelope
			json.Unmarshal(r.Data, &env)
			if id, ok := pending[r.PartitionKey]; ok && id != env.EventID {
				t.Fatalf("%s: event %d was sent before its refused record %s", r.PartitionKey, env.EventNumber, id)
			}
			delete(pending, r.PartitionKey)
			if _, rejected := c.Fault.Reject[j]; rejected || c.Fault.Call != "" {
				pending[r.PartitionKey] = env.EventID
				refused++
			}
		}
	}
	if len(pending) > 0 {
		t.Fatalf("%d refused records never sent again", len(pending))
	}
	return refused
}

// writeCABundle writes a self-signed CA certificate for AWS_CA_BUNDLE.
func writeCABundle(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ditto test CA"}, IsCA: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestKinesisEndToEnd: test server → ditto (a process, with AWS_CA_BUNDLE
// set, which rules out a custom HTTP client) → kinesalite with four
// shards; every event arrives once as its envelope, byte for byte, under its
// stream's partition key, in order; JSON, binary and empty events alike.
func TestKinesisEndToEnd(t *testing.T) {
	k := newKinesisEnv(t, 4, false)
	k.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := k.seed(t, "customer", 40, 15)
	streams = append(streams, "customer-Zoë-東京")
	k.append(t, streams[len(streams)-1], 0, 4)
	metrics := testutil.FreeAddr(t)
	p := startProcess(t, k.dittoEnv(map[string]string{"DITTO_METRICS_ADDRESS": metrics, "AWS_CA_BUNDLE": writeCABundle(t)}))
	src := k.sinkEvents(t, streams)
	recs := k.waitRecords(t, 40*15+4, 60*time.Second)
	checkRecords(t, recs, src, true)
	shards := map[string]bool{}
	for _, r := range recs {
		shards[r.Shard] = true
	}
	if len(shards) < 2 {
		t.Fatalf("records on %d shard(s): the test does not cover several", len(shards))
	}
	testutil.Eventually(t, 30*time.Second, "/health/ready 200 and 604 events processed", func() bool {
		code, _ := readyStatus(metrics)
		return code == http.StatusOK && metricSum(scrape(t, metrics), "ditto_events_processed_total") == 604
	})
	text := scrape(t, metrics)
	if !strings.Contains(text, `ditto_io_duration_seconds_count{app="ditto",operation="put_records",system="kinesis",target="destination"}`) {
		t.Fatalf("no put_records timings in /metrics:\n%s", text)
	}
	if strings.Contains(p.output.String(), kinesalite.SecretKey) {
		t.Fatal("the output holds the secret key")
	}
	stopGracefully(t, p)
}

// TestKinesisFaultsLoseAndReorderNothing: PutRecords calls throttled as a
// whole, and records rejected one by one (FailedRecordCount > 0, an
// earlier event of a stream rejected while other streams' records of the
// same call are accepted): every event arrives once, in order; no call holds
// two records of one stream; a refused record is its stream's next record.
func TestKinesisFaultsLoseAndReorderNothing(t *testing.T) {
	k := newKinesisEnv(t, 3, true)
	codes := []string{"ProvisionedThroughputExceededException", "InternalFailure", "KMSThrottlingException"}
	rejected := 0
	k.proxy.SetRule(func(n int, recs []kinesalite.Entry) kinesalite.Fault {
		switch {
		case n < 60 && n%6 == 1:
			return kinesalite.Fault{Call: kinesalite.Throttle}
		case n%3 == 2:
			rej := map[int]string{}
			for i := range recs {
				if i%3 == 0 {
					rej[i] = codes[rejected%len(codes)]
					rejected++
				}
			}
			return kinesalite.Fault{Reject: rej}
		}
		return kinesalite.Fault{}
	})
	k.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := k.seed(t, "customer", 30, 20)
	metrics := testutil.FreeAddr(t)
	p := startProcess(t, k.dittoEnv(map[string]string{"DITTO_METRICS_ADDRESS": metrics, "DITTO_WRITE_RETRIES": "100"}))
	src := k.sinkEvents(t, streams)
	testutil.Eventually(t, 120*time.Second, "600 events processed", func() bool {
		// ditto may not listen yet.
		code, _ := readyStatus(metrics)
		return code != 0 && metricSum(scrape(t, metrics), "ditto_events_processed_total") == 600
	})
	checkRecords(t, k.records(t), src, true)
	refused := checkCallsOneRecordPerKey(t, k.proxy.Calls())
	text := scrape(t, metrics)
	retried, throttled := metricSum(text, "ditto_kinesis_records_retried_total"), metricSum(text, "ditto_kinesis_records_throttled_total")
	t.Logf("%d calls, %d records refused; ditto counted %v retried, %v throttled", len(k.proxy.Calls()), refused, retried, throttled)
	if refused == 0 || retried == 0 || throttled == 0 {
		t.Fatalf("refused %d, retried %v, throttled %v: the faults did not happen or were not counted", refused, retried, throttled)
	}
	if n := len(parked(t, k.srcC, "$ce-customer", "ditto")); n != 0 {
		t.Fatalf("%d events parked", n)
	}
	stopGracefully(t, p)
}

// TestKinesisKilledMidRunLosesNothing kills ditto with SIGKILL three times
// while the source keeps receiving writes. Kinesis has no idempotent put,
// so events written but not yet acked are written again: duplicates are
// allowed, but every event is there, and no record runs ahead of its
// stream (see checkRecords).
func TestKinesisKilledMidRunLosesNothing(t *testing.T) {
	k := newKinesisEnv(t, 4, false)
	k.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	const streams, perStream = 40, 60
	names, writerDone := writeInChunks(k.srcC, streams, perStream, 5, testEvents)
	env := k.dittoEnv(map[string]string{"DITTO_BUFFER_SIZE": "50", "DITTO_BATCH_MAX_EVENTS": "7"})
	seen := 0
	for kill := 0; kill < 3; kill++ {
		p := startProcess(t, env)
		target := min(seen+100, streams*perStream)
		seen = len(k.waitRecords(t, target, 60*time.Second))
		p.kill()
	}
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	p := startProcess(t, env)
	src := k.sinkEvents(t, names)
	var c kinesisCheck
	testutil.Eventually(t, 90*time.Second, "every event on Kinesis", func() bool {
		recs := k.records(t)
		ids := map[string]bool{}
		for _, r := range recs {
			var env recordEnvelope
			json.Unmarshal(r.Data, &env)
			ids[env.EventID] = true
		}
		if len(ids) < streams*perStream {
			return false
		}
		c = checkRecords(t, recs, src, false)
		return true
	})
	t.Logf("%d records for %d events: %d duplicates after 3 kills", c.records, streams*perStream, c.duplicates)
	stopGracefully(t, p)
}

// --- bad input (see badinput_test.go) --------------------------------------

func testKinesisStreamMissingAtStart(t *testing.T) {
	k := newKinesisEnv(t, 1, false)
	p := startProcess(t, k.dittoEnv(map[string]string{"DITTO_KINESIS_STREAM_NAME": "no-such-stream"}))
	if code := p.exitCode(t); code != 1 {
		t.Fatalf("exit code %d, want 1:\n%s", code, p.output)
	}
	want := "DITTO_KINESIS_STREAM_NAME: Kinesis stream no-such-stream does not exist in region us-east-1"
	if !strings.Contains(p.output.String(), want) {
		t.Fatalf("output lacks %q:\n%s", want, p.output)
	}
}

func testKinesisNoRegion(t *testing.T) {
	k := newKinesisEnv(t, 1, false)
	env := k.dittoEnv(nil)
	delete(env, "AWS_REGION")
	p := startProcess(t, env)
	if code := p.exitCode(t); code != 1 || !strings.Contains(p.output.String(), "no AWS region: set AWS_REGION") {
		t.Fatalf("exit code %d:\n%s", code, p.output)
	}
}

// testKinesisStreamDeletedMidRun: the stream is deleted while ditto runs;
// /health/ready says so, the events wait (nothing parked), and once the
// stream is back they all arrive, in order.
func testKinesisStreamDeletedMidRun(t *testing.T) {
	k := newKinesisEnv(t, 2, false)
	k.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := k.seed(t, "customer", 10, 3)
	metrics := testutil.FreeAddr(t)
	p := startProcess(t, k.dittoEnv(map[string]string{"DITTO_METRICS_ADDRESS": metrics, "DITTO_WRITE_RETRIES": "1000"}))
	k.waitRecords(t, 30, 60*time.Second)
	ctx := context.Background()
	if err := kinesalite.DeleteStream(ctx, k.direct, k.stream); err != nil {
		t.Fatal(err)
	}
	for _, s := range streams {
		k.append(t, s, 3, 4)
	}
	testutil.Eventually(t, 30*time.Second, "/health/ready 503 naming the stream", func() bool {
		code, body := readyStatus(metrics)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "Kinesis stream ditto-events does not exist")
	})
	testutil.Eventually(t, 30*time.Second, "the failing writes logged", func() bool {
		return strings.Contains(p.output.String(), "Kinesis stream ditto-events does not exist")
	})
	if err := kinesalite.CreateStream(ctx, k.direct, k.stream, 2); err != nil {
		t.Fatal(err)
	}
	// The new stream holds what was written after the deletion: events 3-6.
	src := k.sinkEvents(t, streams)
	for s := range src {
		src[s] = src[s][3:]
	}
	recs := k.waitRecords(t, 40, 60*time.Second)
	checkRecords(t, recs, src, true)
	testutil.Eventually(t, 30*time.Second, "/health/ready 200 again", func() bool {
		code, _ := readyStatus(metrics)
		return code == http.StatusOK
	})
	if n := len(parked(t, k.srcC, "$ce-customer", "ditto")); n != 0 {
		t.Fatalf("%d events parked during the outage", n)
	}
	stopGracefully(t, p)
}

// testKinesisCredentialsRejected: Kinesis answers every call with
// UnrecognizedClientException (what a wrong access key gets); ditto keeps
// running with /health/ready 503, holds the events, never prints the secret
// key, and delivers everything once the credentials are accepted.
func testKinesisCredentialsRejected(t *testing.T) {
	k := newKinesisEnv(t, 1, true)
	k.proxy.Refuse(&kinesalite.Refusal{Status: 400, Type: "UnrecognizedClientException", Message: "The security token included in the request is invalid."})
	k.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := k.seed(t, "customer", 5, 3)
	metrics := testutil.FreeAddr(t)
	p := startProcess(t, k.dittoEnv(map[string]string{"DITTO_METRICS_ADDRESS": metrics, "DITTO_WRITE_RETRIES": "1000", "DITTO_LOG_LEVEL": "debug"}))
	testutil.Eventually(t, 30*time.Second, "/health/ready 503 naming the credentials", func() bool {
		code, body := readyStatus(metrics)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "Kinesis refused ditto's credentials")
	})
	testutil.Eventually(t, 30*time.Second, "a refused write logged", func() bool {
		return strings.Contains(p.output.String(), `"message":"retrying write"`)
	})
	k.proxy.Refuse(nil)
	checkRecords(t, k.waitRecords(t, 15, 60*time.Second), k.sinkEvents(t, streams), true)
	if strings.Contains(p.output.String(), kinesalite.SecretKey) {
		t.Fatal("the output holds the secret key")
	}
	if n := len(parked(t, k.srcC, "$ce-customer", "ditto")); n != 0 {
		t.Fatalf("%d events parked", n)
	}
	stopGracefully(t, p)
}

// testKinesisRecordTooLarge: an event whose envelope is over Kinesis's
// 1 MiB record limit is parked with the reason; the stream's next event and
// the other streams go on.
func testKinesisRecordTooLarge(t *testing.T) {
	k := newKinesisEnv(t, 1, false)
	k.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	big := "customer-big"
	appendEvents(t, k.srcC, big, esdb.NoStream{},
		esdb.EventData{EventID: uuid.New(), EventType: "before", ContentType: esdb.ContentTypeJson, Data: []byte(`{}`)},
		esdb.EventData{EventID: uuid.New(), EventType: "huge", ContentType: esdb.ContentTypeBinary, Data: make([]byte, 800<<10)},
		esdb.EventData{EventID: uuid.New(), EventType: "after", ContentType: esdb.ContentTypeJson, Data: []byte(`{}`)})
	others := k.seed(t, "customer", 3, 3)
	p := startProcess(t, k.dittoEnv(nil))
	reasons := waitParked(t, k.srcC, 1, "event 1 of stream customer-big is 1092")
	t.Logf("park reason: %q", reasons[0])
	if !strings.Contains(reasons[0], "over Kinesis's limit of 1048576 bytes (1 MiB)") {
		t.Fatalf("park reason %q", reasons[0])
	}
	src := k.sinkEvents(t, append(others, big))
	src[big] = []sinks.Event{src[big][0], src[big][2]}
	checkRecords(t, k.waitRecords(t, 11, 60*time.Second), src, true)
	stopGracefully(t, p)
}
