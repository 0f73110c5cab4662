package kinesis

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/kinesalite"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/sinks"
)

// loadEnv loads ditto's configuration with only vars set among DITTO_*.
func loadEnv(t *testing.T, vars map[string]string) (*config.Config, error) {
	t.Helper()
	return testutil.LoadConfig(t, map[string]string{
		"DITTO_SOURCE_CONNECTION_STRING": "esdb://127.0.0.1:2113?tls=false",
		"DITTO_SUBSCRIPTIONS":            "$ce-customer:ditto",
		"DITTO_SINK":                     "kinesis",
		"DITTO_KINESIS_STREAM_NAME":      "orders",
	}, vars)
}

func TestSettings(t *testing.T) {
	c, err := loadEnv(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s, ok := c.SinkSettings.(*Settings); !ok || s.StreamName != "orders" {
		t.Fatalf("settings %#v", c.SinkSettings)
	}
	if c.Writers != writers {
		t.Fatalf("DITTO_WRITERS defaults to %d with the kinesis sink, want %d", c.Writers, writers)
	}
	if c, err := loadEnv(t, map[string]string{"DITTO_WRITERS": "7"}); err != nil || c.Writers != 7 {
		t.Fatalf("DITTO_WRITERS=7: %v, %v", c, err)
	}
	arn := "arn:aws:kinesis:eu-west-1:123456789012:stream/orders"
	if _, err := loadEnv(t, map[string]string{"DITTO_KINESIS_STREAM_NAME": arn}); err != nil {
		t.Fatalf("a stream ARN: %v", err)
	}
	for _, tc := range []struct{ name, value, want string }{
		{"missing", "", "DITTO_KINESIS_STREAM_NAME is required when DITTO_SINK=kinesis"},
		{"bad name", "my stream", `DITTO_KINESIS_STREAM_NAME="my stream" is not a Kinesis stream name`},
		{"too long", strings.Repeat("s", 129), "is not a Kinesis stream name"},
		{"not kinesis", "arn:aws:sqs:eu-west-1:123456789012:orders", "is not the ARN of a Kinesis stream"},
		{"broken ARN", "arn:aws:kinesis", "is not a valid ARN"},
		{"bad name in ARN", "arn:aws:kinesis:eu-west-1:123456789012:stream/a b", `names the stream "a b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadEnv(t, map[string]string{"DITTO_KINESIS_STREAM_NAME": tc.value})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// The summary explains DITTO_WRITERS' default; it must name the figure.
func TestSummaryNamesTheWritersDefault(t *testing.T) {
	p, ok := sinks.Lookup("kinesis")
	if !ok {
		t.Fatal("kinesis is not registered")
	}
	if p.Writers != writers || !strings.Contains(p.Summary, "DITTO_WRITERS defaults to "+strconv.Itoa(p.Writers)) {
		t.Fatalf("writers %d, summary %q", p.Writers, p.Summary)
	}
}

// awsEnv points the SDK's default configuration at endpoint, with every
// AWS_* variable of the machine out of the way (AWS_CA_BUNDLE included).
func awsEnv(t *testing.T, endpoint string) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "AWS_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	for k, v := range kinesalite.Env(endpoint) {
		t.Setenv(k, v)
	}
}

// caBundle writes a self-signed CA certificate to a file.
func caBundle(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ditto test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
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

// TestOpen opens the sink as ditto does, from the SDK's default chain, with
// and without AWS_CA_BUNDLE (which rules out a custom HTTP client), by name
// and by ARN.
func TestOpen(t *testing.T) {
	srv := kinesalite.Start(t)
	ctx := context.Background()
	if err := kinesalite.CreateStream(ctx, kinesalite.NewClient(srv.Endpoint()), "orders", 2); err != nil {
		t.Fatal(err)
	}
	p, _ := sinks.Lookup("kinesis")
	env := sinks.Env{Log: zerolog.Nop(), Observe: func(string, time.Duration) {}}
	for _, tc := range []struct{ name, stream string }{
		{"name", "orders"},
		{"ARN", "arn:aws:kinesis:" + kinesalite.Region + ":000000000000:stream/orders"},
	} {
		for _, bundle := range []bool{false, true} {
			t.Run(tc.name+"/AWS_CA_BUNDLE="+strconv.FormatBool(bundle), func(t *testing.T) {
				awsEnv(t, srv.Endpoint())
				if bundle {
					t.Setenv("AWS_CA_BUNDLE", caBundle(t))
				}
				env.Metrics = prometheus.NewRegistry()
				s, err := p.Open(ctx, &Settings{StreamName: tc.stream}, env)
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				if err := s.(sinks.Readier).Ready(ctx); err != nil {
					t.Fatalf("ready: %v", err)
				}
				if err := s.Write(ctx, "customer-1", events("customer-1", 0, 2)); err != nil {
					t.Fatalf("write: %v", err)
				}
			})
		}
	}
	t.Run("missing stream", func(t *testing.T) {
		awsEnv(t, srv.Endpoint())
		env.Metrics = prometheus.NewRegistry()
		_, err := p.Open(ctx, &Settings{StreamName: "no-such-stream"}, env)
		if err == nil || !strings.Contains(err.Error(), "Kinesis stream no-such-stream does not exist in region us-east-1") {
			t.Fatalf("open: %v", err)
		}
	})
	t.Run("no region", func(t *testing.T) {
		awsEnv(t, srv.Endpoint())
		os.Unsetenv("AWS_REGION")
		_, err := p.Open(ctx, &Settings{StreamName: "orders"}, env)
		if err == nil || !strings.Contains(err.Error(), "no AWS region: set AWS_REGION") {
			t.Fatalf("open: %v", err)
		}
	})
	t.Run("endpoint unreachable", func(t *testing.T) {
		awsEnv(t, "http://127.0.0.1:1")
		t.Setenv("AWS_MAX_ATTEMPTS", "1")
		env.Metrics = prometheus.NewRegistry()
		s, err := p.Open(ctx, &Settings{StreamName: "orders"}, env)
		if err != nil {
			t.Fatalf("open must not fail when Kinesis is away for now: %v", err)
		}
		defer s.Close()
		if err := s.(sinks.Readier).Ready(ctx); err == nil || !strings.Contains(err.Error(), "writing to Kinesis stream orders failed") {
			t.Fatalf("ready: %v", err)
		}
	})
}
