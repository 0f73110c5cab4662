package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/ditto-replicator/ditto/sinks"
)

// Settings are the kafka sink's variables.
type Settings struct {
	Brokers          string `envconfig:"KAFKA_BROKERS" ditto:"required" desc:"Comma-separated host:port seed brokers of the Kafka cluster."`
	Topic            string `envconfig:"KAFKA_TOPIC" ditto:"required" desc:"Topic of every event: a fixed name, or a template with {category} (the stream id before its first '-', the whole id if it has none) and {stream}, e.g. events-{category}. An expanded name that Kafka does not accept (characters other than a-z A-Z 0-9 . _ -, longer than 249) parks the event with the reason."`
	Format           string `envconfig:"KAFKA_FORMAT" default:"raw" desc:"raw: the record's value is the event's data unchanged; envelope: the JSON envelope of the Kinesis sink (stream_id, event_id, event_number, event_type, event_timestamp, replicated_on, data, metadata). Both carry the esdb-record-* headers."`
	Compression      string `envconfig:"KAFKA_COMPRESSION" default:"zstd" desc:"Record batch compression: none, gzip, snappy, lz4 or zstd."`
	AutoCreateTopics bool   `envconfig:"KAFKA_AUTO_CREATE_TOPICS" default:"false" desc:"Let the cluster create a missing topic on first use (it must allow auto.create.topics.enable). false: a missing fixed topic stops ditto at start (exit code 1); a missing templated topic holds its events back (retried, /health/ready 503 naming it) until it is created."`
	MaxMessageBytes  int    `envconfig:"KAFKA_MAX_MESSAGE_BYTES" default:"1000012" desc:"Largest record batch ditto produces, before compression; keep it at or below the topic's max.message.bytes. An event whose record is larger is parked with the reason (512-1073741824)."`
	ClientID         string `envconfig:"KAFKA_CLIENT_ID" default:"ditto" desc:"Client id ditto presents to the brokers."`
	SASLMechanism    string `envconfig:"KAFKA_SASL_MECHANISM" default:"" desc:"SASL authentication: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (empty = none). Use it with TLS: PLAIN sends the password as it is."`
	SASLUsername     string `envconfig:"KAFKA_SASL_USERNAME" default:"" desc:"SASL user name."`
	SASLPassword     string `envconfig:"KAFKA_SASL_PASSWORD" default:"" secret:"true" desc:"SASL password; never logged."`
	TLS              bool   `envconfig:"KAFKA_TLS" default:"false" desc:"Connect with TLS, verifying the brokers against the system's roots (or DITTO_KAFKA_TLS_CA_FILE). Setting any DITTO_KAFKA_TLS_* file turns TLS on too."`
	TLSCAFile        string `envconfig:"KAFKA_TLS_CA_FILE" default:"" desc:"PEM file of the CA certificates that sign the brokers' certificates."`
	TLSCertFile      string `envconfig:"KAFKA_TLS_CERT_FILE" default:"" desc:"PEM client certificate for mutual TLS (with DITTO_KAFKA_TLS_KEY_FILE)."`
	TLSKeyFile       string `envconfig:"KAFKA_TLS_KEY_FILE" default:"" desc:"PEM private key of DITTO_KAFKA_TLS_CERT_FILE."`
	TLSServerName    string `envconfig:"KAFKA_TLS_SERVER_NAME" default:"" desc:"Name to verify the brokers' certificates against, if not their host names."`
}

// Validate checks every setting the client would only reject when
// connecting, or never.
func (s *Settings) Validate() []string {
	var p []string
	if s.Brokers != "" {
		if _, err := s.brokers(); err != nil {
			p = append(p, fmt.Sprintf("DITTO_KAFKA_BROKERS=%q: %v", s.Brokers, err))
		}
	}
	if s.Topic != "" {
		if _, err := parseTopic(s.Topic); err != nil {
			p = append(p, fmt.Sprintf("DITTO_KAFKA_TOPIC=%q: %v", s.Topic, err))
		}
	}
	switch s.Format {
	case formatRaw, formatEnvelope:
	default:
		p = append(p, fmt.Sprintf("DITTO_KAFKA_FORMAT=%q: expected raw or envelope", s.Format))
	}
	if _, err := codec(s.Compression); err != nil {
		p = append(p, fmt.Sprintf("DITTO_KAFKA_COMPRESSION=%q: expected none, gzip, snappy, lz4 or zstd", s.Compression))
	}
	if s.MaxMessageBytes < 512 || s.MaxMessageBytes > 1<<30 {
		p = append(p, fmt.Sprintf("DITTO_KAFKA_MAX_MESSAGE_BYTES=%d is out of range: expected 512 to 1073741824", s.MaxMessageBytes))
	}
	if s.ClientID == "" {
		p = append(p, "DITTO_KAFKA_CLIENT_ID must not be empty")
	}
	switch {
	case s.SASLMechanism == "" && (s.SASLUsername != "" || s.SASLPassword != ""):
		p = append(p, "DITTO_KAFKA_SASL_USERNAME or DITTO_KAFKA_SASL_PASSWORD is set without DITTO_KAFKA_SASL_MECHANISM: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
	case s.SASLMechanism != "":
		if _, err := s.mechanism(); err != nil {
			p = append(p, fmt.Sprintf("DITTO_KAFKA_SASL_MECHANISM=%q: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", s.SASLMechanism))
		} else if s.SASLUsername == "" || s.SASLPassword == "" {
			p = append(p, fmt.Sprintf("DITTO_KAFKA_SASL_MECHANISM=%s needs DITTO_KAFKA_SASL_USERNAME and DITTO_KAFKA_SASL_PASSWORD", s.SASLMechanism))
		}
	}
	if (s.TLSCertFile == "") != (s.TLSKeyFile == "") {
		p = append(p, "DITTO_KAFKA_TLS_CERT_FILE and DITTO_KAFKA_TLS_KEY_FILE must be set together")
	} else if _, err := s.tlsConfig(); err != nil {
		p = append(p, err.Error())
	}
	return p
}

func (s *Settings) brokers() ([]string, error) {
	var out []string
	for _, b := range strings.Split(s.Brokers, ",") {
		b = strings.TrimSpace(b)
		if b == "" {
			continue
		}
		host, port, err := net.SplitHostPort(b)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("%q is not host:port", b)
		}
		out = append(out, b)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no broker given")
	}
	return out, nil
}

func (s *Settings) mechanism() (sasl.Mechanism, error) {
	switch strings.ToUpper(s.SASLMechanism) {
	case "PLAIN":
		return plain.Auth{User: s.SASLUsername, Pass: s.SASLPassword}.AsMechanism(), nil
	case "SCRAM-SHA-256":
		return scram.Auth{User: s.SASLUsername, Pass: s.SASLPassword}.AsSha256Mechanism(), nil
	case "SCRAM-SHA-512":
		return scram.Auth{User: s.SASLUsername, Pass: s.SASLPassword}.AsSha512Mechanism(), nil
	}
	return nil, fmt.Errorf("unknown SASL mechanism %q", s.SASLMechanism)
}

// tlsConfig is nil without TLS. Its errors name the variable.
func (s *Settings) tlsConfig() (*tls.Config, error) {
	if !s.tlsOn() {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: s.TLSServerName}
	if s.TLSCAFile != "" {
		pem, err := os.ReadFile(s.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("DITTO_KAFKA_TLS_CA_FILE: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("DITTO_KAFKA_TLS_CA_FILE=%s holds no PEM certificate", s.TLSCAFile)
		}
	}
	if s.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(s.TLSCertFile, s.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("DITTO_KAFKA_TLS_CERT_FILE/DITTO_KAFKA_TLS_KEY_FILE: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// tlsOn reports whether the settings ask for TLS: DITTO_KAFKA_TLS, or any
// DITTO_KAFKA_TLS_* setting.
func (s *Settings) tlsOn() bool {
	return s.TLS || s.TLSCAFile != "" || s.TLSCertFile != "" || s.TLSServerName != ""
}

func codec(name string) (kgo.CompressionCodec, error) {
	switch name {
	case "none":
		return kgo.NoCompression(), nil
	case "gzip":
		return kgo.GzipCompression(), nil
	case "snappy":
		return kgo.SnappyCompression(), nil
	case "lz4":
		return kgo.Lz4Compression(), nil
	case "zstd":
		return kgo.ZstdCompression(), nil
	}
	return kgo.CompressionCodec{}, fmt.Errorf("unknown compression %q", name)
}

// clientOptions are the franz-go options the settings call for.
func (s *Settings) clientOptions() ([]kgo.Opt, error) {
	brokers, err := s.brokers()
	if err != nil {
		return nil, fmt.Errorf("DITTO_KAFKA_BROKERS: %w", err)
	}
	c, err := codec(s.Compression)
	if err != nil {
		return nil, fmt.Errorf("DITTO_KAFKA_COMPRESSION: %w", err)
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.ClientID(s.ClientID),
		// Idempotent writes (franz-go's default) need acks from every
		// in-sync replica; said here so that no default can change it.
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchCompression(c),
		kgo.ProducerBatchMaxBytes(int32(s.MaxMessageBytes)),
		// No linger: a write waits for its records' acks, and the
		// replicator already gathers each stream's events into one write.
		kgo.ProducerLinger(0),
	}
	if s.AutoCreateTopics {
		opts = append(opts, kgo.AllowAutoTopicCreation())
	}
	if s.SASLMechanism != "" {
		m, err := s.mechanism()
		if err != nil {
			return nil, fmt.Errorf("DITTO_KAFKA_SASL_MECHANISM: %w", err)
		}
		opts = append(opts, kgo.SASL(m))
	}
	tc, err := s.tlsConfig()
	if err != nil {
		return nil, err
	}
	if tc != nil {
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	return opts, nil
}

func init() {
	sinks.Register(sinks.Plugin{
		Name:     "kafka",
		Summary:  "produces each event as one record to a Kafka topic, keyed by its original stream (one partition per stream, in order), through franz-go's idempotent producer.",
		Settings: func() sinks.Settings { return &Settings{} },
		Writers:  defaultWriters,
		Open: func(ctx context.Context, settings sinks.Settings, env sinks.Env) (sinks.Sink, error) {
			k, err := Open(ctx, settings.(*Settings), env)
			if err != nil {
				return nil, err // not a nil *Sink in an interface
			}
			return k, nil
		},
	})
}
