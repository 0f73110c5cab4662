package kafka

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/sinks"
)

// cluster starts an in-process kfake cluster on 127.0.0.1.
func cluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func settings(c *kfake.Cluster, topic string) *Settings {
	return &Settings{Brokers: strings.Join(c.ListenAddrs(), ","), Topic: topic, Format: formatRaw, Compression: "zstd",
		MaxMessageBytes: 1000012, ClientID: "ditto"}
}

func open(t testing.TB, s *Settings) *Sink {
	t.Helper()
	k, err := Open(context.Background(), s, sinks.Env{Log: zerolog.Nop(), Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// events makes n events of stream from number from on: JSON, binary, empty.
func events(stream string, from, n int) []sinks.Event {
	evs := make([]sinks.Event, n)
	for i := range evs {
		num := from + i
		e := sinks.Event{Stream: stream, Number: uint64(num), ID: uuid.New(), Type: fmt.Sprintf("type-%d", num%3),
			ContentType: "application/json", Created: time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC).Add(time.Duration(num) * time.Second)}
		e.Data = fmt.Appendf(nil, `{"stream":%q,"n":%d}`, stream, num)
		e.Metadata = fmt.Appendf(nil, `{"$correlationId":"c-%d"}`, num)
		switch num % 4 {
		case 1:
			e.ContentType = "application/octet-stream"
			e.Data = []byte{0, 0xff, 0xfe, byte(num)}
			e.Metadata = []byte{0xc3, 0x28}
		case 2:
			e.Data, e.Metadata = nil, nil
		}
		evs[i] = e
	}
	return evs
}

// consume reads n records of the topics from the start.
func consume(t *testing.T, c *kfake.Cluster, n int, topics ...string) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topics...), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("%d of %d records within 30s", len(out), n)
		}
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r) })
	}
	return out
}

func header(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// check compares a record with the event it carries: key, headers and, in
// raw format, the value byte for byte.
func check(t *testing.T, r *kgo.Record, e *sinks.Event, raw bool) {
	t.Helper()
	if string(r.Key) != e.Stream {
		t.Errorf("key %q, want %q", r.Key, e.Stream)
	}
	want := map[string]string{
		HeaderID: e.ID.String(), HeaderStream: e.Stream, HeaderNumber: strconv.FormatUint(e.Number, 10),
		HeaderCreated: e.Created.UTC().Format(time.RFC3339Nano), HeaderType: e.Type,
		HeaderContentType: e.ContentType, HeaderMetadata: string(e.Metadata),
	}
	for k, v := range want {
		if got, ok := header(r, k); !ok || got != v {
			t.Errorf("%s@%d: header %s = %q (present %v), want %q", e.Stream, e.Number, k, got, ok, v)
		}
	}
	if len(r.Headers) != headersPerRecord {
		t.Errorf("%d headers, want %d", len(r.Headers), headersPerRecord)
	}
	if raw && !bytes.Equal(r.Value, e.Data) {
		t.Errorf("%s@%d: value %q, want the data %q", e.Stream, e.Number, r.Value, e.Data)
	}
}

func TestWriteRawKeepsBytesHeadersAndOrder(t *testing.T) {
	c := cluster(t, kfake.SeedTopics(4, "events"))
	k := open(t, settings(c, "events"))
	ctx := context.Background()
	byStream := map[string][]sinks.Event{}
	for i := 0; i < 6; i++ {
		s := fmt.Sprintf("customer-%d", i)
		for from := 0; from < 12; from += 4 {
			evs := events(s, from, 4)
			if err := k.Write(ctx, s, evs); err != nil {
				t.Fatalf("write %s: %v", s, err)
			}
			byStream[s] = append(byStream[s], evs...)
		}
	}
	recs := consume(t, c, 72, "events")
	if len(recs) != 72 {
		t.Fatalf("%d records, want 72", len(recs))
	}
	next := map[string]int{}
	partition := map[string]int32{}
	for _, r := range recs {
		s := string(r.Key)
		if p, ok := partition[s]; ok && p != r.Partition {
			t.Fatalf("%s in partitions %d and %d", s, p, r.Partition)
		}
		partition[s] = r.Partition
		i := next[s]
		next[s]++
		check(t, r, &byStream[s][i], true)
	}
}

func TestWriteEnvelopeIsTheKinesisEnvelope(t *testing.T) {
	c := cluster(t, kfake.SeedTopics(2, "events"))
	s := settings(c, "events")
	s.Format = formatEnvelope
	k := open(t, s)
	evs := events("customer-1", 0, 4)
	if err := k.Write(context.Background(), "customer-1", evs); err != nil {
		t.Fatal(err)
	}
	for i, r := range consume(t, c, 4, "events") {
		check(t, r, &evs[i], false)
		var v struct {
			ReplicatedOn time.Time `json:"replicated_on"`
		}
		if err := json.Unmarshal(r.Value, &v); err != nil {
			t.Fatalf("value %q: %v", r.Value, err)
		}
		if want := sinks.AppendEnvelope(nil, &evs[i], v.ReplicatedOn); !bytes.Equal(r.Value, want) {
			t.Fatalf("value\n%s\nwant\n%s", r.Value, want)
		}
	}
}

func TestTopicTemplate(t *testing.T) {
	c := cluster(t, kfake.SeedTopics(2, "events-customer", "events-order", "events-nodash"))
	k := open(t, settings(c, "events-{category}"))
	ctx := context.Background()
	for _, s := range []string{"customer-1", "order-7-x", "nodash"} {
		if err := k.Write(ctx, s, events(s, 0, 2)); err != nil {
			t.Fatalf("write %s: %v", s, err)
		}
	}
	for topic, stream := range map[string]string{"events-customer": "customer-1", "events-order": "order-7-x", "events-nodash": "nodash"} {
		for _, r := range consume(t, c, 2, topic) {
			if string(r.Key) != stream || r.Topic != topic {
				t.Fatalf("record of %s in %s, want %s in %s", r.Key, r.Topic, stream, topic)
			}
		}
	}
	// A stream whose topic Kafka would refuse is parked, not renamed.
	k = open(t, settings(c, "{stream}"))
	err := k.Write(ctx, "customer-Zoë", events("customer-Zoë", 0, 3))
	var we *sinks.WriteError
	if !errors.As(err, &we) || we.Kind != sinks.Permanent || we.Written != 0 || !strings.Contains(we.Reason, `stream "customer-Zoë" maps to topic "customer-Zoë", which Kafka does not accept`) {
		t.Fatalf("write: %v", err)
	}
	long := strings.Repeat("x", 250)
	if err := k.Write(ctx, long, events(long, 0, 1)); !errors.As(err, &we) || we.Kind != sinks.Permanent || !strings.Contains(we.Reason, "at most 249") {
		t.Fatalf("write: %v", err)
	}
}

func TestTooLargeIsPermanent(t *testing.T) {
	c := cluster(t, kfake.SeedTopics(1, "events"), kfake.BrokerConfigs(map[string]string{"message.max.bytes": "4096"}))
	ctx := context.Background()
	big := events("customer-big", 0, 1)
	big[0].Data = bytes.Repeat([]byte("x"), 8192)
	big[0].ContentType = "application/octet-stream"
	s := settings(c, "events")
	s.Compression = "none" // the batch must stay larger than the broker's limit
	k := open(t, s)
	err := k.Write(ctx, "customer-big", big)
	var we *sinks.WriteError
	if !errors.As(err, &we) || we.Kind != sinks.Permanent || !strings.Contains(we.Reason, "topic events refused the record of") ||
		!strings.Contains(we.Reason, "MESSAGE_TOO_LARGE") {
		t.Fatalf("write: %v", err)
	}
	// The partition works on.
	if err := k.Write(ctx, "customer-small", events("customer-small", 0, 3)); err != nil {
		t.Fatal(err)
	}
	// Larger than DITTO_KAFKA_MAX_MESSAGE_BYTES: refused before it is sent.
	s.MaxMessageBytes = 1024
	k = open(t, s)
	evs := events("customer-2", 0, 3)
	evs[1].Data = bytes.Repeat([]byte("y"), 2000)
	err = k.Write(ctx, "customer-2", evs)
	if !errors.As(err, &we) || we.Kind != sinks.Permanent || we.Written != 1 || !strings.Contains(we.Reason, "is larger than DITTO_KAFKA_MAX_MESSAGE_BYTES=1024") {
		t.Fatalf("write: %v", err)
	}
}

// A broker refuses a whole batch; a record that shared it with others is
// retried, a record that was alone in it is parked.
func TestClassifyTooLargeBatch(t *testing.T) {
	refused := func(batch int) error {
		return fmt.Errorf("%w (uncompressed_bytes=%d, compressed_bytes=%d)", kerr.MessageTooLarge, batch, batch/2)
	}
	for _, tc := range []struct {
		batch, size, left int
		want              sinks.Kind
	}{
		{5000, 4900, 1, sinks.Permanent}, // alone
		{9000, 300, 1, sinks.Transient},  // beside a larger record
		{9000, 300, 2, sinks.Permanent},  // several: the replicator isolates them
	} {
		if got, reason := classify(refused(tc.batch), "t", tc.size, 1000012, tc.left); got != tc.want {
			t.Errorf("batch %d, record %d, %d left: %s (%s), want %s", tc.batch, tc.size, tc.left, got, reason, tc.want)
		}
	}
	for err, want := range map[error]sinks.Kind{
		kerr.TopicAuthorizationFailed:                     sinks.Permanent,
		kerr.InvalidTopicException:                        sinks.Permanent,
		fmt.Errorf("x: %w", kerr.UnknownTopicOrPartition): sinks.Transient,
		kerr.NotLeaderForPartition:                        sinks.Transient,
		kerr.RequestTimedOut:                              sinks.Transient,
		context.Canceled:                                  sinks.Transient,
		errors.New("connection reset"):                    sinks.Transient,
	} {
		if got, _ := classify(err, "t", 10, 1000012, 1); got != want {
			t.Errorf("%v: %s, want %s", err, got, want)
		}
	}
}

func TestUnknownFixedTopic(t *testing.T) {
	c := cluster(t, kfake.SeedTopics(1, "events"), kfake.AllowAutoTopicCreation())
	_, err := Open(context.Background(), settings(c, "nope"), sinks.Env{Log: zerolog.Nop()})
	if !sinks.IsFatal(err) || !strings.Contains(err.Error(), "DITTO_KAFKA_TOPIC=nope: the topic does not exist on the cluster; create it, or set DITTO_KAFKA_AUTO_CREATE_TOPICS=true") {
		t.Fatalf("open: %v", err)
	}
	s := settings(c, "made")
	s.AutoCreateTopics = true
	k := open(t, s)
	if err := k.Write(context.Background(), "customer-1", events("customer-1", 0, 2)); err != nil {
		t.Fatal(err)
	}
	consume(t, c, 2, "made")
}

// A templated topic that does not exist holds its events back (transient)
// and readiness names it until it is there.
func TestMissingTemplatedTopic(t *testing.T) {
	c := cluster(t, kfake.SeedTopics(1, "t-customer"))
	k := open(t, settings(c, "t-{category}"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := k.Write(ctx, "order-1", events("order-1", 0, 2))
	var we *sinks.WriteError
	if !errors.As(err, &we) || we.Kind != sinks.Transient || !strings.Contains(we.Reason, "topic t-order does not exist") {
		t.Fatalf("write: %v", err)
	}
	if err := k.Ready(ctx); err == nil || sinks.IsFatal(err) || !strings.Contains(err.Error(), "topic t-order does not exist on the cluster") {
		t.Fatalf("ready: %v", err)
	}
	if err := k.Write(ctx, "customer-1", events("customer-1", 0, 2)); err != nil {
		t.Fatal(err)
	}
	// Created: ready again without another write to it.
	req := kmsg.NewPtrCreateTopicsRequest()
	ct := kmsg.NewCreateTopicsRequestTopic()
	ct.Topic, ct.NumPartitions, ct.ReplicationFactor = "t-order", 1, 1
	req.Topics = append(req.Topics, ct)
	if _, err := req.RequestWith(ctx, k.client); err != nil {
		t.Fatal(err)
	}
	if err := k.Ready(ctx); err != nil {
		t.Fatalf("ready once the topic exists: %v", err)
	}
}

func TestReadyWhenUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &Settings{Brokers: addr, Topic: "events", Format: formatRaw, Compression: "zstd", MaxMessageBytes: 1000012, ClientID: "ditto"}
	k := open(t, s) // opens: the cluster may come later
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := k.Ready(ctx); err == nil || sinks.IsFatal(err) || !strings.Contains(err.Error(), "Kafka brokers "+addr+" not reachable") {
		t.Fatalf("ready: %v", err)
	}
}

func TestSASL(t *testing.T) {
	for _, mech := range []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} {
		t.Run(mech, func(t *testing.T) {
			c := cluster(t, kfake.SeedTopics(1, "events"), kfake.EnableSASL(), kfake.Superuser(mech, "ditto", "Right-Pa55"))
			s := settings(c, "events")
			s.SASLMechanism, s.SASLUsername, s.SASLPassword = mech, "ditto", "Right-Pa55"
			k := open(t, s)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := k.Ready(ctx); err != nil {
				t.Fatal(err)
			}
			if err := k.Write(ctx, "customer-1", events("customer-1", 0, 2)); err != nil {
				t.Fatal(err)
			}
			// kfake drops the connection of a wrong password; a broker
			// answers SASL_AUTHENTICATION_FAILED, as here.
			c.ControlKey(36, func(req kmsg.Request) (kmsg.Response, error, bool) {
				c.KeepControl()
				resp := req.ResponseKind().(*kmsg.SASLAuthenticateResponse)
				resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
				resp.ErrorMessage = kmsg.StringPtr("Authentication failed: Invalid username or password")
				return resp, nil, true
			})
			s.SASLPassword = "Wr0ng-Pa55"
			_, err := Open(ctx, s, sinks.Env{Log: zerolog.Nop()})
			if !sinks.IsFatal(err) || !strings.Contains(err.Error(), "the cluster rejected the credentials") {
				t.Fatalf("open with a wrong password: %v", err)
			}
			if strings.Contains(err.Error(), "Wr0ng-Pa55") || strings.Contains(err.Error(), "Right-Pa55") {
				t.Fatalf("the password leaked: %v", err)
			}
		})
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	cert, caFile := selfSigned(t, dir)
	c := cluster(t, kfake.SeedTopics(1, "events"), kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))
	s := settings(c, "events")
	s.TLSCAFile = caFile
	k := open(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := k.Write(ctx, "customer-1", events("customer-1", 0, 2)); err != nil {
		t.Fatal(err)
	}
	// Without the CA the broker's certificate is not trusted: not ready.
	s.TLSCAFile, s.TLS = "", true
	k = open(t, s)
	ctx, cancel = context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := k.Ready(ctx); err == nil {
		t.Fatal("ready against an untrusted certificate")
	}
}

// selfSigned writes a self-signed CA certificate for 127.0.0.1 to dir.
func selfSigned(t *testing.T, dir string) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kfake"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, file
}

// loadEnv loads ditto's configuration with DITTO_SINK=kafka and vars.
func loadEnv(t *testing.T, vars map[string]string) (*config.Config, error) {
	t.Helper()
	return testutil.LoadConfig(t, map[string]string{
		"DITTO_SOURCE_CONNECTION_STRING": "esdb://127.0.0.1:2113?tls=false",
		"DITTO_SUBSCRIPTIONS":            "$ce-customer:ditto",
		"DITTO_SINK":                     "kafka",
		"DITTO_KAFKA_BROKERS":            "127.0.0.1:9092",
		"DITTO_KAFKA_TOPIC":              "events",
	}, vars)
}

func TestSettings(t *testing.T) {
	c, err := loadEnv(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := c.SinkSettings.(*Settings)
	if s.Format != "raw" || s.Compression != "zstd" || s.AutoCreateTopics || s.MaxMessageBytes != 1000012 || c.Writers != defaultWriters {
		t.Fatalf("unexpected defaults: %+v, writers %d", s, c.Writers)
	}
	cases := []struct {
		name string
		vars map[string]string
		want string
	}{
		{"brokers missing", map[string]string{"DITTO_KAFKA_BROKERS": ""}, "DITTO_KAFKA_BROKERS is required when DITTO_SINK=kafka"},
		{"broker without port", map[string]string{"DITTO_KAFKA_BROKERS": "a:1,b"}, `DITTO_KAFKA_BROKERS="a:1,b": "b" is not host:port`},
		{"topic missing", map[string]string{"DITTO_KAFKA_TOPIC": ""}, "DITTO_KAFKA_TOPIC is required"},
		{"topic invalid", map[string]string{"DITTO_KAFKA_TOPIC": "my topic"}, `DITTO_KAFKA_TOPIC="my topic": ' ' is not allowed in a Kafka topic name`},
		{"template placeholder unknown", map[string]string{"DITTO_KAFKA_TOPIC": "e-{type}"}, "unknown placeholder {type}: expected {category} or {stream}"},
		{"template unclosed", map[string]string{"DITTO_KAFKA_TOPIC": "e-{category"}, "unclosed '{'"},
		{"format unknown", map[string]string{"DITTO_KAFKA_FORMAT": "avro"}, `DITTO_KAFKA_FORMAT="avro": expected raw or envelope`},
		{"compression unknown", map[string]string{"DITTO_KAFKA_COMPRESSION": "brotli"}, `DITTO_KAFKA_COMPRESSION="brotli": expected none, gzip, snappy, lz4 or zstd`},
		{"max bytes out of range", map[string]string{"DITTO_KAFKA_MAX_MESSAGE_BYTES": "100"}, "DITTO_KAFKA_MAX_MESSAGE_BYTES=100 is out of range"},
		{"sasl mechanism unknown", map[string]string{"DITTO_KAFKA_SASL_MECHANISM": "GSSAPI", "DITTO_KAFKA_SASL_USERNAME": "u", "DITTO_KAFKA_SASL_PASSWORD": "pw-77"}, `DITTO_KAFKA_SASL_MECHANISM="GSSAPI": expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512`},
		{"sasl without password", map[string]string{"DITTO_KAFKA_SASL_MECHANISM": "PLAIN", "DITTO_KAFKA_SASL_USERNAME": "u"}, "DITTO_KAFKA_SASL_MECHANISM=PLAIN needs DITTO_KAFKA_SASL_USERNAME and DITTO_KAFKA_SASL_PASSWORD"},
		{"credentials without mechanism", map[string]string{"DITTO_KAFKA_SASL_USERNAME": "u", "DITTO_KAFKA_SASL_PASSWORD": "pw-77"}, "is set without DITTO_KAFKA_SASL_MECHANISM"},
		{"cert without key", map[string]string{"DITTO_KAFKA_TLS_CERT_FILE": "/tmp/c.pem"}, "DITTO_KAFKA_TLS_CERT_FILE and DITTO_KAFKA_TLS_KEY_FILE must be set together"},
		{"CA file missing", map[string]string{"DITTO_KAFKA_TLS_CA_FILE": "/nonexistent/ca.pem"}, "DITTO_KAFKA_TLS_CA_FILE: open /nonexistent/ca.pem"},
		{"tls not bool", map[string]string{"DITTO_KAFKA_TLS": "maybe"}, `DITTO_KAFKA_TLS="maybe" is not a valid boolean`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadEnv(t, tc.vars)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "pw-77") {
				t.Fatalf("the password leaked: %v", err)
			}
		})
	}
}
