package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/metrics"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/verify"
)

// The bad-input catalog: every way a user can hand ditto something wrong,
// and what they see. Each case name is a row of README.md's bad-input section
// (TestBadInputCatalogIsDocumented keeps the two in step). The rule: a clear
// error (exit code 2 for configuration, 1 for a fatal runtime problem), or a
// parked event with a reason, or a documented retry with /health/ready 503;
// never a crash, a hang or a silent drop.

// badConfig cases start ditto as a process with one bad setting on top of a
// valid configuration; it must exit with code and print every want.
var badConfig = []struct {
	name string
	set  map[string]string // "" unsets the variable
	code int
	want []string
}{
	{"DITTO_SOURCE_CONNECTION_STRING missing", map[string]string{"DITTO_SOURCE_CONNECTION_STRING": ""}, 2, []string{"DITTO_SOURCE_CONNECTION_STRING is required"}},
	{"DITTO_SOURCE_CONNECTION_STRING not esdb://", map[string]string{"DITTO_SOURCE_CONNECTION_STRING": "http://127.0.0.1:2113"}, 2, []string{"DITTO_SOURCE_CONNECTION_STRING is not a valid connection string"}},
	{"DITTO_SOURCE_CONNECTION_STRING bad port, password hidden", map[string]string{"DITTO_SOURCE_CONNECTION_STRING": "esdb://admin:pw-4711-secret@127.0.0.1:notaport"}, 2, []string{"DITTO_SOURCE_CONNECTION_STRING is not a valid connection string", "admin:xxxxx@"}},
	{"DITTO_SOURCE_CONNECTION_STRING bad option value", map[string]string{"DITTO_SOURCE_CONNECTION_STRING": "esdb://127.0.0.1:2113?tls=maybe"}, 2, []string{"DITTO_SOURCE_CONNECTION_STRING is not a valid connection string", "tls"}},
	{"DITTO_SOURCE_CONNECTION_STRING tlsCAFile missing", map[string]string{"DITTO_SOURCE_CONNECTION_STRING": "esdb://127.0.0.1:2113?tls=true&tlsCAFile=/nonexistent/ca.pem"}, 2, []string{"DITTO_SOURCE_CONNECTION_STRING is not a valid connection string", "/nonexistent/ca.pem"}},
	{"DITTO_SOURCE_CONNECTION_STRING userCertFile without userKeyFile", map[string]string{"DITTO_SOURCE_CONNECTION_STRING": "esdb://127.0.0.1:2113?tls=true&userCertFile=/tmp/user.crt"}, 2, []string{"DITTO_SOURCE_CONNECTION_STRING is not a valid connection string", "both userCertFile and userKeyFile must be provided"}},
	{"DITTO_SOURCE_CONNECTION_STRING userCertFile unreadable", map[string]string{"DITTO_SOURCE_CONNECTION_STRING": "esdb://127.0.0.1:2113?tls=true&userCertFile=/nonexistent/user.crt&userKeyFile=/nonexistent/user.key"}, 2, []string{"DITTO_SOURCE_CONNECTION_STRING is not a valid connection string", "client certificate: open /nonexistent/user.crt"}},
	{"DITTO_DESTINATION_CONNECTION_STRING missing", map[string]string{"DITTO_DESTINATION_CONNECTION_STRING": ""}, 2, []string{"DITTO_DESTINATION_CONNECTION_STRING is required when DITTO_SINK=eventstore"}},
	{"DITTO_DESTINATION_CONNECTION_STRING malformed", map[string]string{"DITTO_DESTINATION_CONNECTION_STRING": "esdb://h:1:2:3"}, 2, []string{"DITTO_DESTINATION_CONNECTION_STRING is not a valid connection string"}},
	{"DITTO_SUBSCRIPTIONS missing", map[string]string{"DITTO_SUBSCRIPTIONS": ""}, 2, []string{"DITTO_SUBSCRIPTIONS is required"}},
	{"DITTO_SUBSCRIPTIONS without group", map[string]string{"DITTO_SUBSCRIPTIONS": "$ce-customer"}, 2, []string{`"$ce-customer" is not stream:group`}},
	{"DITTO_SUBSCRIPTIONS empty group", map[string]string{"DITTO_SUBSCRIPTIONS": "$ce-customer:"}, 2, []string{"empty stream or group"}},
	{"DITTO_SUBSCRIPTIONS listed twice", map[string]string{"DITTO_SUBSCRIPTIONS": "a:b, a:b"}, 2, []string{"a:b is listed twice"}},
	{"DITTO_SUBSCRIPTIONS only commas", map[string]string{"DITTO_SUBSCRIPTIONS": ",,"}, 2, []string{"DITTO_SUBSCRIPTIONS"}},
	{"DITTO_KINESIS_STREAM_NAME missing", map[string]string{"DITTO_SINK": "kinesis"}, 2, []string{"DITTO_KINESIS_STREAM_NAME is required when DITTO_SINK=kinesis"}},
	{"DITTO_KINESIS_STREAM_NAME not a stream name or ARN", map[string]string{"DITTO_SINK": "kinesis", "DITTO_KINESIS_STREAM_NAME": "my stream"}, 2, []string{`DITTO_KINESIS_STREAM_NAME="my stream" is not a Kinesis stream name`}},
	{"DITTO_SINK unknown", map[string]string{"DITTO_SINK": "kafka2"}, 2, []string{`DITTO_SINK="kafka2" is not a known sink`}},
	{"DITTO_BUFFER_SIZE not a number", map[string]string{"DITTO_BUFFER_SIZE": "ten"}, 2, []string{`DITTO_BUFFER_SIZE="ten" is not a valid integer`}},
	{"DITTO_BUFFER_SIZE out of range", map[string]string{"DITTO_BUFFER_SIZE": "0"}, 2, []string{"DITTO_BUFFER_SIZE=0 is out of range: expected 1 to 100000"}},
	{"DITTO_CONSUMERS_PER_SUBSCRIPTION out of range", map[string]string{"DITTO_CONSUMERS_PER_SUBSCRIPTION": "65"}, 2, []string{"DITTO_CONSUMERS_PER_SUBSCRIPTION=65 is out of range"}},
	{"DITTO_SKIP_VERSION_CHECK not a boolean", map[string]string{"DITTO_SKIP_VERSION_CHECK": "maybe"}, 2, []string{`DITTO_SKIP_VERSION_CHECK="maybe" is not a valid boolean`}},
	{"DITTO_REPLICATION_THROTTLE_INTERVAL without unit", map[string]string{"DITTO_REPLICATION_THROTTLE_INTERVAL": "5"}, 2, []string{`DITTO_REPLICATION_THROTTLE_INTERVAL="5" is not a valid duration`}},
	{"DITTO_REPLICATION_THROTTLE_INTERVAL negative", map[string]string{"DITTO_REPLICATION_THROTTLE_INTERVAL": "-1s"}, 2, []string{"DITTO_REPLICATION_THROTTLE_INTERVAL=-1s must not be negative"}},
	{"DITTO_TIME_TO_LIVE below a second", map[string]string{"DITTO_TIME_TO_LIVE": "500ms"}, 2, []string{"DITTO_TIME_TO_LIVE=500ms is below the 1s resolution"}},
	{"DITTO_TIME_TO_LIVE not a duration", map[string]string{"DITTO_TIME_TO_LIVE": "forever"}, 2, []string{`DITTO_TIME_TO_LIVE="forever" is not a valid duration`}},
	{"DITTO_READ_ONLY not a boolean", map[string]string{"DITTO_READ_ONLY": "yes please"}, 2, []string{`DITTO_READ_ONLY="yes please" is not a valid boolean`}},
	{"DITTO_CREATE_SUBSCRIPTIONS not a boolean", map[string]string{"DITTO_CREATE_SUBSCRIPTIONS": "2"}, 2, []string{`DITTO_CREATE_SUBSCRIPTIONS="2" is not a valid boolean`}},
	{"DITTO_WRITERS out of range", map[string]string{"DITTO_WRITERS": "0"}, 2, []string{"DITTO_WRITERS=0 is out of range"}},
	{"DITTO_BATCH_MAX_EVENTS out of range", map[string]string{"DITTO_BATCH_MAX_EVENTS": "10001"}, 2, []string{"DITTO_BATCH_MAX_EVENTS=10001 is out of range"}},
	{"DITTO_BATCH_MAX_BYTES out of range", map[string]string{"DITTO_BATCH_MAX_BYTES": "10"}, 2, []string{"DITTO_BATCH_MAX_BYTES=10 is out of range"}},
	{"DITTO_WRITE_RETRIES out of range", map[string]string{"DITTO_WRITE_RETRIES": "0"}, 2, []string{"DITTO_WRITE_RETRIES=0 is out of range"}},
	{"DITTO_RETRY_BACKOFF_MAX too small", map[string]string{"DITTO_RETRY_BACKOFF_MAX": "1ms"}, 2, []string{"DITTO_RETRY_BACKOFF_MAX=1ms must be at least 50ms"}},
	{"DITTO_RECOVERY_POINT_INTERVAL below a second", map[string]string{"DITTO_RECOVERY_POINT_INTERVAL": "500ms"}, 2, []string{"DITTO_RECOVERY_POINT_INTERVAL=500ms must be 0 (off) or at least 1s"}},
	{"DITTO_SHUTDOWN_TIMEOUT zero", map[string]string{"DITTO_SHUTDOWN_TIMEOUT": "0s"}, 2, []string{"DITTO_SHUTDOWN_TIMEOUT=0s must be positive"}},
	{"DITTO_METRICS_ADDRESS without port", map[string]string{"DITTO_METRICS_ADDRESS": "5000"}, 2, []string{`DITTO_METRICS_ADDRESS="5000" is not a host:port`}},
	{"DITTO_LOG_LEVEL unknown", map[string]string{"DITTO_LOG_LEVEL": "verbose"}, 2, []string{`DITTO_LOG_LEVEL="verbose": expected debug, info, warn or error`}},
	{"DITTO_LOG_FORMAT unknown", map[string]string{"DITTO_LOG_FORMAT": "xml"}, 2, []string{`DITTO_LOG_FORMAT="xml": expected json or console`}},
	{"DITTO_KAFKA_BROKERS missing", map[string]string{"DITTO_SINK": "kafka", "DITTO_KAFKA_TOPIC": "events"}, 2, []string{"DITTO_KAFKA_BROKERS is required when DITTO_SINK=kafka"}},
	{"DITTO_KAFKA_TOPIC not a valid topic name", kafkaSet("DITTO_KAFKA_TOPIC", "my topic"), 2, []string{`DITTO_KAFKA_TOPIC="my topic": ' ' is not allowed in a Kafka topic name`}},
	{"DITTO_KAFKA_TOPIC unknown placeholder", kafkaSet("DITTO_KAFKA_TOPIC", "events-{type}"), 2, []string{"unknown placeholder {type}: expected {category} or {stream}"}},
	{"DITTO_KAFKA_FORMAT unknown", kafkaSet("DITTO_KAFKA_FORMAT", "avro"), 2, []string{`DITTO_KAFKA_FORMAT="avro": expected raw or envelope`}},
	{"DITTO_KAFKA_COMPRESSION unknown", kafkaSet("DITTO_KAFKA_COMPRESSION", "brotli"), 2, []string{`DITTO_KAFKA_COMPRESSION="brotli": expected none, gzip, snappy, lz4 or zstd`}},
	{"DITTO_KAFKA_SASL_MECHANISM unknown, password hidden", kafkaSet("DITTO_KAFKA_SASL_MECHANISM", "GSSAPI", "DITTO_KAFKA_SASL_USERNAME", "ditto", "DITTO_KAFKA_SASL_PASSWORD", "pw-4711-secret"), 2, []string{`DITTO_KAFKA_SASL_MECHANISM="GSSAPI": expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512`}},
	{"DITTO_KAFKA_TLS_CERT_FILE without DITTO_KAFKA_TLS_KEY_FILE", kafkaSet("DITTO_KAFKA_TLS_CERT_FILE", "/tmp/client.pem"), 2, []string{"DITTO_KAFKA_TLS_CERT_FILE and DITTO_KAFKA_TLS_KEY_FILE must be set together"}},
	{"DITTO_DESTINATIONS with DITTO_SINK set", fanOutBad(map[string]string{"DITTO_SINK": "eventstore"}), 2, []string{"DITTO_DESTINATIONS and DITTO_SINK are both set"}},
	{"DITTO_DESTINATIONS entry without a sink", fanOutBad(map[string]string{"DITTO_DESTINATIONS": "east"}), 2, []string{`DITTO_DESTINATIONS="east": "east" is not name=sink`}},
	{"DITTO_DESTINATIONS name not lowercase letters and digits", fanOutBad(map[string]string{"DITTO_DESTINATIONS": "East=eventstore"}), 2, []string{`DITTO_DESTINATIONS="East=eventstore": destination name "East" must be lowercase letters and digits`}},
	{"DITTO_DESTINATIONS name listed twice", fanOutBad(map[string]string{"DITTO_DESTINATIONS": "east=eventstore,east=stdout"}), 2, []string{"destination east is listed twice"}},
	{"DITTO_DESTINATIONS unknown sink", fanOutBad(map[string]string{"DITTO_DESTINATIONS": "east=eventstore,feed=kafka2"}), 2, []string{`destination feed: "kafka2" is not a known sink`}},
	{"DITTO_EAST_DESTINATION_CONNECTION_STRING missing", fanOutBad(map[string]string{"DITTO_EAST_DESTINATION_CONNECTION_STRING": ""}), 2, []string{"DITTO_EAST_DESTINATION_CONNECTION_STRING is required for destination east (east=eventstore)"}},
	{"DITTO_EAST_DESTINATION_CONNECTION_STRING malformed, password hidden", fanOutBad(map[string]string{"DITTO_EAST_DESTINATION_CONNECTION_STRING": "esdb://admin:pw-4711-secret@127.0.0.1:notaport"}), 2, []string{"DITTO_EAST_DESTINATION_CONNECTION_STRING is not a valid connection string (esdb://admin:xxxxx@127.0.0.1:notaport)"}},
	{"DITTO_EAST_TIME_TO_LIVE not a duration", fanOutBad(map[string]string{"DITTO_EAST_TIME_TO_LIVE": "forever"}), 2, []string{`DITTO_EAST_TIME_TO_LIVE="forever" is not a valid duration`}},
	{"DITTO_DESTINATION_CONNECTION_STRING set with DITTO_DESTINATIONS", fanOutBad(map[string]string{"DITTO_DESTINATION_CONNECTION_STRING": "esdb://127.0.0.1:2?tls=false"}), 2, []string{"DITTO_DESTINATION_CONNECTION_STRING is set, but with DITTO_DESTINATIONS each destination reads its own (DITTO_EAST_DESTINATION_CONNECTION_STRING for destination east)"}},
	{"DITTO_INCLUDE_STREAMS bad regular expression", map[string]string{"DITTO_INCLUDE_STREAMS": "customer-,/customer-(/"}, 2, []string{"DITTO_INCLUDE_STREAMS: /customer-(/ is not a valid regular expression (RE2 syntax)"}},
	{"DITTO_EXCLUDE_STREAMS bad regular expression", map[string]string{"DITTO_EXCLUDE_STREAMS": "/[z-a]/"}, 2, []string{"DITTO_EXCLUDE_STREAMS: /[z-a]/ is not a valid regular expression"}},
	{"DITTO_INCLUDE_EVENT_TYPES bad regular expression", map[string]string{"DITTO_INCLUDE_EVENT_TYPES": "/*Created/"}, 2, []string{"DITTO_INCLUDE_EVENT_TYPES: /*Created/ is not a valid regular expression"}},
	{"DITTO_EXCLUDE_EVENT_TYPES bad regular expression", map[string]string{"DITTO_EXCLUDE_EVENT_TYPES": "/(?<name/"}, 2, []string{"DITTO_EXCLUDE_EVENT_TYPES: /(?<name/ is not a valid regular expression"}},
	{"DITTO_INCLUDE_METADATA not key=value", map[string]string{"DITTO_INCLUDE_METADATA": "tenant"}, 2, []string{"DITTO_INCLUDE_METADATA: \"tenant\" is not key=value"}},
	{"DITTO_EXCLUDE_METADATA empty key", map[string]string{"DITTO_EXCLUDE_METADATA": "=internal"}, 2, []string{"DITTO_EXCLUDE_METADATA: \"=internal\" is not key=value"}},
	{"DITTO_INCLUDE_SYSTEM_EVENT_TYPES not a boolean", map[string]string{"DITTO_INCLUDE_SYSTEM_EVENT_TYPES": "all"}, 2, []string{"DITTO_INCLUDE_SYSTEM_EVENT_TYPES=\"all\" is not a valid boolean"}},
	{"DITTO_STREAM_TEMPLATE unknown part", map[string]string{"DITTO_STREAM_TEMPLATE": "dr-{name}"}, 2, []string{"DITTO_STREAM_TEMPLATE=\"dr-{name}\": unknown part {name}: expected {stream}, {category} or {id}"}},
	{"DITTO_STREAM_TEMPLATE unbalanced brace", map[string]string{"DITTO_STREAM_TEMPLATE": "dr-{stream"}, 2, []string{"DITTO_STREAM_TEMPLATE=\"dr-{stream\": '{' without '}'"}},
	{"DITTO_STREAM_TEMPLATE a system stream", map[string]string{"DITTO_STREAM_TEMPLATE": "$dr-{stream}"}, 2, []string{"destination streams must not start with '$'"}},
	{"DITTO_STREAM_TEMPLATE consolidating two subscriptions", map[string]string{"DITTO_STREAM_TEMPLATE": "all-events", "DITTO_SUBSCRIPTIONS": "$ce-customer:ditto,$ce-order:ditto"}, 2, []string{"consolidates the events of 2 subscriptions (DITTO_SUBSCRIPTIONS) into one stream"}},
	{"DITTO_PROVENANCE not a boolean", map[string]string{"DITTO_PROVENANCE": "sure"}, 2, []string{"DITTO_PROVENANCE=\"sure\" is not a valid boolean"}},
	{"DITTO_ORIGIN_NAME without provenance", map[string]string{"DITTO_ORIGIN_NAME": "eu-west"}, 2, []string{"DITTO_ORIGIN_NAME=\"eu-west\" is written into provenance metadata, which this configuration does not write: set DITTO_PROVENANCE=true"}},
	{"DITTO_ORIGIN_NAME with a control character", map[string]string{"DITTO_ORIGIN_NAME": "eu\twest", "DITTO_PROVENANCE": "true"}, 2, []string{"must not contain control characters"}},
	{"DITTO_COPY_STREAM_METADATA with DITTO_SINK=stdout", map[string]string{"DITTO_COPY_STREAM_METADATA": "true", "DITTO_SINK": "stdout"}, 2, []string{"DITTO_COPY_STREAM_METADATA=true: the stdout sink has no stream metadata to set"}},
	{"DITTO_COPY_STREAM_METADATA with a consolidated stream", map[string]string{"DITTO_COPY_STREAM_METADATA": "true", "DITTO_STREAM_TEMPLATE": "all-customers"}, 2, []string{"a consolidated stream has many source streams"}},
	{"DITTO_COPY_STREAM_ACL without DITTO_COPY_STREAM_METADATA", map[string]string{"DITTO_COPY_STREAM_ACL": "true"}, 2, []string{"DITTO_COPY_STREAM_ACL=true needs DITTO_COPY_STREAM_METADATA=true"}},
	{"DITTO_DESTINATION_NAME without DITTO_ORIGIN_NAME", map[string]string{"DITTO_DESTINATION_NAME": "us", "DITTO_PROVENANCE": "true"}, 2, []string{`DITTO_DESTINATION_NAME="us" needs DITTO_ORIGIN_NAME`}},
	{"DITTO_DESTINATION_NAME without provenance", map[string]string{"DITTO_DESTINATION_NAME": "us", "DITTO_ORIGIN_NAME": "eu"}, 2, []string{`DITTO_DESTINATION_NAME="us": loop prevention reads the $origin chain of provenance metadata, which this configuration does not write: set DITTO_PROVENANCE=true`}},
	{"DITTO_DESTINATION_NAME equal to DITTO_ORIGIN_NAME", map[string]string{"DITTO_DESTINATION_NAME": "eu", "DITTO_ORIGIN_NAME": "eu", "DITTO_PROVENANCE": "true"}, 2, []string{`DITTO_DESTINATION_NAME="eu" is DITTO_ORIGIN_NAME too`}},
	{"DITTO_DESTINATION_NAME with a control character", map[string]string{"DITTO_DESTINATION_NAME": "u\ts", "DITTO_ORIGIN_NAME": "eu", "DITTO_PROVENANCE": "true"}, 2, []string{`DITTO_DESTINATION_NAME="u\ts" must not contain control characters`}},
	{"DITTO_DESTINATION_NAME with DITTO_DESTINATIONS", fanOutBad(map[string]string{"DITTO_DESTINATION_NAME": "us", "DITTO_ORIGIN_NAME": "eu", "DITTO_PROVENANCE": "true"}), 2, []string{`DITTO_DESTINATION_NAME="us" with DITTO_DESTINATIONS: an event from the named cluster would be dropped for every destination`}},
	{"DITTO_CONFLICT_POLICY unknown", map[string]string{"DITTO_CONFLICT_POLICY": "overwrite"}, 2, []string{`DITTO_CONFLICT_POLICY="overwrite": expected park, conflict-stream, skip`}},
	{"DITTO_CONFLICT_POLICY=conflict-stream with DITTO_DESTINATIONS", fanOutBad(map[string]string{"DITTO_CONFLICT_POLICY": "conflict-stream"}), 2, []string{"DITTO_CONFLICT_POLICY=conflict-stream with DITTO_DESTINATIONS: the conflicts stream would be written to every destination"}},
	{"DITTO_CONFLICT_STREAM without DITTO_CONFLICT_POLICY=conflict-stream", map[string]string{"DITTO_CONFLICT_STREAM": "conflicts"}, 2, []string{`DITTO_CONFLICT_STREAM="conflicts" is set, but DITTO_CONFLICT_POLICY=park writes no conflicts stream`}},
	{"DITTO_CONFLICT_STREAM a system stream", map[string]string{"DITTO_CONFLICT_POLICY": "conflict-stream", "DITTO_CONFLICT_STREAM": "$conflicts"}, 2, []string{`DITTO_CONFLICT_STREAM="$conflicts": the conflicts stream must not start with '$'`}},
	{"several problems at once", map[string]string{"DITTO_BUFFER_SIZE": "0", "DITTO_LOG_LEVEL": "loud", "DITTO_SUBSCRIPTIONS": ""}, 2, []string{"DITTO_BUFFER_SIZE=0", "DITTO_LOG_LEVEL=\"loud\"", "DITTO_SUBSCRIPTIONS is required"}},
}

// kafkaSet is a valid Kafka sink configuration with the given variables
// (name, value, name, value, …) on top.
func kafkaSet(kv ...string) map[string]string {
	m := map[string]string{"DITTO_SINK": "kafka", "DITTO_KAFKA_BROKERS": "127.0.0.1:1", "DITTO_KAFKA_TOPIC": "events"}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// fanOutBad is a valid fan-out to east and west (DITTO_DESTINATION_CONNECTION_STRING
// unset) with set on top.
func fanOutBad(set map[string]string) map[string]string {
	out := map[string]string{
		"DITTO_DESTINATION_CONNECTION_STRING":      "",
		"DITTO_DESTINATIONS":                       "east=eventstore,west=eventstore",
		"DITTO_EAST_DESTINATION_CONNECTION_STRING": "esdb://127.0.0.1:2?tls=false",
		"DITTO_WEST_DESTINATION_CONNECTION_STRING": "esdb://127.0.0.1:3?tls=false",
	}
	maps.Copy(out, set)
	return out
}

func TestBadInputConfiguration(t *testing.T) {
	valid := map[string]string{
		"DITTO_SOURCE_CONNECTION_STRING":      "esdb://127.0.0.1:1?tls=false",
		"DITTO_DESTINATION_CONNECTION_STRING": "esdb://127.0.0.1:2?tls=false",
		"DITTO_SUBSCRIPTIONS":                 "$ce-customer:ditto",
	}
	for _, tc := range badConfig {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{}
			for k, v := range valid {
				env[k] = v
			}
			for k, v := range tc.set {
				if v == "" {
					delete(env, k)
				} else {
					env[k] = v
				}
			}
			p := startProcess(t, env)
			if code := p.exitCode(t); code != tc.code {
				t.Fatalf("exit code %d, want %d; output:\n%s", code, tc.code, p.output)
			}
			out := p.output.String()
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not contain %q:\n%s", w, out)
				}
			}
			if !strings.Contains(out, "run 'ditto config' to list every variable") {
				t.Errorf("output does not point to ditto config:\n%s", out)
			}
			if strings.Contains(out, "pw-4711-secret") {
				t.Errorf("output leaks the password:\n%s", out)
			}
		})
	}
}

// badRuntime cases run ditto against real servers with bad data, bad
// credentials or servers that are away.
var badRuntime = []struct {
	name string
	test func(t *testing.T)
}{
	{"unknown command", testUnknownCommand},
	{"DITTO_METRICS_ADDRESS in use", testMetricsAddressInUse},
	{"source unreachable", testSourceUnreachable},
	{"source host unknown", testSourceHostUnknown},
	{"destination unreachable", testDestinationUnreachable},
	{"destination down for seconds mid-run", testDestinationDownMidRun},
	{"one destination of DITTO_DESTINATIONS down", testFanOutDestinationDown},
	{"wrong password on one destination of DITTO_DESTINATIONS", testFanOutWrongPassword},
	{"wrong source password", testWrongSourcePassword},
	{"wrong destination password", testWrongDestinationPassword},
	{"missing subscription group", testMissingGroup},
	{"missing subscription group with DITTO_CREATE_SUBSCRIPTIONS", testMissingGroupCreated},
	{"binary data and metadata", testBinaryData},
	{"empty data and metadata", testEmptyData},
	{"invalid JSON marked as JSON", testInvalidJSON},
	{"metadata not a JSON object where provenance is required", testNonObjectMetadataParked},
	{"event larger than the destination accepts", testEventTooLarge},
	{"destination stream tombstoned", testDestinationTombstoned},
	{"destination stream soft-deleted", testDestinationSoftDeleted},
	{"destination stream diverged", testDestinationDiverged},
	{"diverged stream with DITTO_CONFLICT_POLICY=conflict-stream", testDivergedConflictStream},
	{"unresolved links", testUnresolvedLinks},
	{"source stream deleted mid-run", testSourceDeletedMidRun},
	{"source stream tombstoned mid-run", testSourceTombstonedMidRun},
	{"unicode stream names", testUnicodeStreams},
	{"group name with : and , in DITTO_SUBSCRIPTIONS", testEscapedGroup},
	{"category with : in DITTO_SUBSCRIPTIONS", testEscapedStream},
	{"DITTO_KAFKA_TOPIC unknown on the cluster", testKafkaTopicUnknown},
	{"Kafka record larger than the topic accepts", testKafkaRecordTooLarge},
	{"Kafka topic template gives an invalid topic name", testKafkaTopicInvalid},
	{"Kinesis stream missing at start", testKinesisStreamMissingAtStart},
	{"no AWS region for Kinesis", testKinesisNoRegion},
	{"Kinesis stream deleted mid-run", testKinesisStreamDeletedMidRun},
	{"Kinesis rejects the credentials", testKinesisCredentialsRejected},
	{"event larger than a Kinesis record", testKinesisRecordTooLarge},
	{"ditto status with a group missing on the source", testStatusMissingGroup},
	{"ditto groups without copy", testGroupsWithoutSubcommand},
	{"ditto groups copy without DITTO_DESTINATION_CONNECTION_STRING", testGroupsCopyWithoutDestination},
	{"ditto groups copy --groups malformed", testGroupsCopyBadGroups},
	{"ditto groups copy of a group missing on the source", testGroupsCopyMissingGroup},
}

func TestBadInputRuntime(t *testing.T) {
	for _, tc := range badRuntime {
		t.Run(tc.name, tc.test)
	}
}

// TestBadInputCatalogIsDocumented keeps README.md's bad-input section in step with the
// cases above.
func TestBadInputCatalogIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	check := func(name string) {
		n++
		if !bytes.Contains(doc, []byte("| "+name+" |")) {
			t.Errorf("README.md has no row %q", "| "+name+" |")
		}
	}
	for _, tc := range badConfig {
		check(tc.name)
	}
	for _, tc := range badRuntime {
		check(tc.name)
	}
	if n < 25 {
		t.Fatalf("only %d cases", n)
	}
}

// --- helpers ---------------------------------------------------------------

// baseEnv is a process environment for ditto from src to dst (none when
// ""), with the maps of extra on top, in order.
func baseEnv(src, dst string, extra ...map[string]string) map[string]string {
	env := map[string]string{
		"DITTO_SOURCE_CONNECTION_STRING": src,
		"DITTO_SUBSCRIPTIONS":            "$ce-customer:ditto",
		"DITTO_METRICS_ADDRESS":          "",
		"DITTO_RETRY_BACKOFF_MAX":        "200ms",
	}
	if dst != "" {
		env["DITTO_DESTINATION_CONNECTION_STRING"] = dst
	}
	for _, m := range extra {
		maps.Copy(env, m)
	}
	return env
}

// parked returns the park reasons on the source for stream::group, in order.
func parked(t *testing.T, c *esdb.Client, stream, group string) []string {
	t.Helper()
	name := "$persistentsubscription-" + stream + "::" + group + "-parked"
	rs, err := c.ReadStream(context.Background(), name, esdb.ReadStreamOptions{From: esdb.Start{}, ResolveLinkTos: false}, 10000)
	if err != nil {
		return nil
	}
	defer rs.Close()
	var reasons []string
	for {
		ev, err := rs.Recv()
		if err != nil {
			return reasons
		}
		var md struct{ Reason string }
		json.Unmarshal(ev.OriginalEvent().UserMetadata, &md)
		reasons = append(reasons, md.Reason)
	}
}

func waitParked(t *testing.T, c *esdb.Client, n int, contains string) []string {
	t.Helper()
	var reasons []string
	testutil.Eventually(t, 60*time.Second, fmt.Sprintf("%d events parked with a reason containing %q", n, contains), func() bool {
		reasons = parked(t, c, "$ce-customer", "ditto")
		got := 0
		for _, r := range reasons {
			if strings.Contains(r, contains) {
				got++
			}
		}
		return got >= n
	})
	return reasons
}

func appendEvents(t *testing.T, c *esdb.Client, stream string, exp esdb.ExpectedRevision, evs ...esdb.EventData) {
	t.Helper()
	if _, err := c.AppendToStream(context.Background(), stream, esdb.AppendToStreamOptions{ExpectedRevision: exp}, evs...); err != nil {
		t.Fatalf("appending to %s: %v", stream, err)
	}
}

func stopGracefully(t *testing.T, p *process) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.exitCode(t); code != 0 {
		t.Fatalf("SIGTERM: exit code %d, want 0:\n%s", code, p.output)
	}
}

// --- runtime cases ---------------------------------------------------------

func testUnknownCommand(t *testing.T) {
	p := startProcess(t, nil, "frobnicate")
	if code := p.exitCode(t); code != 2 || !strings.Contains(p.output.String(), `ditto: unknown command "frobnicate"`) {
		t.Fatalf("exit %d:\n%s", code, p.output)
	}
}

func testMetricsAddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := startProcess(t, baseEnv("esdb://127.0.0.1:1?tls=false", "esdb://127.0.0.1:2?tls=false",
		map[string]string{"DITTO_METRICS_ADDRESS": ln.Addr().String()}))
	if code := p.exitCode(t); code != 1 || !strings.Contains(p.output.String(), "DITTO_METRICS_ADDRESS="+ln.Addr().String()) ||
		!strings.Contains(p.output.String(), "address already in use") {
		t.Fatalf("exit %d:\n%s", code, p.output)
	}
}

// testSourceUnreachable is also the regression test for "ditto never
// connects once the source was down at start": the v4 client closed itself
// after its first failed discovery and every retry failed with "connection
// is closed".
func testSourceUnreachable(t *testing.T) {
	srcAddr, metrics := testutil.FreeAddr(t), testutil.FreeAddr(t)
	dst := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	p := startProcess(t, baseEnv("esdb://"+srcAddr+"?tls=false", dst.ConnectionString(),
		map[string]string{"DITTO_METRICS_ADDRESS": metrics, "DITTO_CREATE_SUBSCRIPTIONS": "true"}))
	testutil.Eventually(t, 30*time.Second, "a retry logged and /health/ready 503", func() bool {
		code, body := readyStatus(metrics)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "not every subscription is connected") &&
			strings.Contains(p.output.String(), "cannot connect to subscription; retrying")
	})
	if code, _ := get(t, "http://"+metrics+"/health/live"); code != http.StatusOK {
		t.Fatalf("/health/live = %d while the source is away", code)
	}
	// The source comes up: ditto connects and replicates.
	src := esdbtest.Start(t, esdbtest.Options{Insecure: true, Addr: srcAddr})
	e := &env{src: src, dst: dst, srcC: mustClient(t, src.ConnectionString()), dstC: mustClient(t, dst.ConnectionString())}
	streams := e.seed(t, "customer", 3, 3)
	e.waitIdentical(t, verify.Options{Streams: streams})
	testutil.Eventually(t, 30*time.Second, "ready", func() bool { code, _ := readyStatus(metrics); return code == http.StatusOK })
	stopGracefully(t, p)
}

func testSourceHostUnknown(t *testing.T) {
	metrics := testutil.FreeAddr(t)
	dst := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	p := startProcess(t, baseEnv("esdb://no-such-host.invalid:2113?tls=false", dst.ConnectionString(),
		map[string]string{"DITTO_METRICS_ADDRESS": metrics}))
	testutil.Eventually(t, 30*time.Second, "a retry logged and /health/ready 503", func() bool {
		code, _ := readyStatus(metrics)
		return code == http.StatusServiceUnavailable && strings.Contains(p.output.String(), "cannot connect to subscription; retrying")
	})
	stopGracefully(t, p)
}

// testDestinationUnreachable: events wait (unacked) while the destination is
// away, and arrive once it is up; also a regression test for the closed
// client (see testSourceUnreachable).
func testDestinationUnreachable(t *testing.T) {
	dstAddr, metrics := testutil.FreeAddr(t), testutil.FreeAddr(t)
	src := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	e := &env{src: src, srcC: mustClient(t, src.ConnectionString())}
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 3, 3)
	p := startProcess(t, baseEnv(src.ConnectionString(), "esdb://"+dstAddr+"?tls=false",
		map[string]string{"DITTO_METRICS_ADDRESS": metrics}))
	testutil.Eventually(t, 30*time.Second, "/health/ready 503 naming the destination", func() bool {
		code, body := readyStatus(metrics)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "destination not reachable")
	})
	e.dst = esdbtest.Start(t, esdbtest.Options{Insecure: true, Addr: dstAddr})
	e.dstC = mustClient(t, e.dst.ConnectionString())
	e.waitIdentical(t, verify.Options{Streams: streams})
	if n := len(parked(t, e.srcC, "$ce-customer", "ditto")); n != 0 {
		t.Fatalf("%d events parked during the outage", n)
	}
	stopGracefully(t, p)
}

// testDestinationDownMidRun: the destination process dies for longer than
// the client's discovery window while ditto writes to many streams at once.
// testDestinationDownMidRun runs with both append paths: through BatchAppend
// on ditto's own connection, which redials, and through the client, which
// closes itself for good after a failed discovery and must be replaced.
func testDestinationDownMidRun(t *testing.T) {
	for _, path := range []struct{ batchAppend, outageLogged string }{
		{"true", `"message":"retrying write"`},
		{"false", "maximum discovery attempt count reached"},
	} {
		t.Run("DITTO_BATCH_APPEND="+path.batchAppend, func(t *testing.T) {
			src := esdbtest.Start(t, esdbtest.Options{Insecure: true})
			dst := startEmulator(t)
			e := &env{src: src, srcC: mustClient(t, src.ConnectionString())}
			e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
			streams := e.seed(t, "customer", 20, 2)
			p := startProcess(t, baseEnv(src.ConnectionString(), dst.connectionString(),
				map[string]string{"DITTO_LOG_LEVEL": "info", "DITTO_BATCH_APPEND": path.batchAppend}))
			e.dstC = mustClient(t, dst.connectionString())
			e.waitIdentical(t, verify.Options{Streams: streams})
			dst.proc.kill()
			for i, s := range streams {
				e.append(t, s, 2, 3)
				if i == 0 {
					testutil.Eventually(t, 30*time.Second, "the outage logged", func() bool {
						return strings.Contains(p.output.String(), path.outageLogged)
					})
				}
			}
			dst.start(t)
			e.dstC = mustClient(t, dst.connectionString())
			e.waitIdentical(t, verify.Options{Streams: streams})
			if n := len(parked(t, e.srcC, "$ce-customer", "ditto")); n != 0 {
				t.Fatalf("%d events parked during the outage", n)
			}
			stopGracefully(t, p)
		})
	}
}

func testWrongSourcePassword(t *testing.T) {
	src := esdbtest.Start(t, esdbtest.Options{}) // TLS with basic auth
	dst := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	cs := "esdb://admin:Wr0ng-Pa55@" + src.Addr() + "?tls=true&tlsCAFile=" + src.CAFile()
	p := startProcess(t, baseEnv(cs, dst.ConnectionString(), map[string]string{"DITTO_LOG_LEVEL": "debug"}))
	if code := p.exitCode(t); code != 1 {
		t.Fatalf("exit code %d, want 1:\n%s", code, p.output)
	}
	out := p.output.String()
	if !strings.Contains(out, "the source rejected the credentials of DITTO_SOURCE_CONNECTION_STRING") {
		t.Fatalf("no clear message:\n%s", out)
	}
	if strings.Contains(out, "Wr0ng-Pa55") {
		t.Fatalf("the output leaks the password:\n%s", out)
	}
}

// testWrongDestinationPassword is the regression test for "wrong destination
// credentials park everything": ditto retried every write as transient until
// the source parked the events; now it exits 1 naming the variable.
func testWrongDestinationPassword(t *testing.T) {
	src := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	dst := esdbtest.Start(t, esdbtest.Options{})
	e := &env{src: src, srcC: mustClient(t, src.ConnectionString())}
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	e.seed(t, "customer", 2, 2)
	cs := "esdb://admin:Wr0ng-Pa55@" + dst.Addr() + "?tls=true&tlsCAFile=" + dst.CAFile()
	p := startProcess(t, baseEnv(src.ConnectionString(), cs, map[string]string{"DITTO_LOG_LEVEL": "debug"}))
	if code := p.exitCode(t); code != 1 {
		t.Fatalf("exit code %d, want 1:\n%s", code, p.output)
	}
	out := p.output.String()
	if !strings.Contains(out, "DITTO_DESTINATION_CONNECTION_STRING: the destination rejected the credentials") {
		t.Fatalf("no clear message:\n%s", out)
	}
	if strings.Contains(out, "Wr0ng-Pa55") {
		t.Fatalf("the output leaks the password:\n%s", out)
	}
	if n := len(parked(t, e.srcC, "$ce-customer", "ditto")); n != 0 {
		t.Fatalf("%d events parked", n)
	}
}

func testMissingGroup(t *testing.T) {
	e := newEnv(t)
	p := startProcess(t, baseEnv(e.src.ConnectionString(), e.dst.ConnectionString(), nil))
	if code := p.exitCode(t); code != 1 {
		t.Fatalf("exit code %d, want 1:\n%s", code, p.output)
	}
	want := `does not exist on the source; create it, or set DITTO_CREATE_SUBSCRIPTIONS=true`
	if !strings.Contains(p.output.String(), want) {
		t.Fatalf("output lacks %q:\n%s", want, p.output)
	}
}

func testMissingGroupCreated(t *testing.T) {
	e := newEnv(t)
	streams := e.seed(t, "customer", 3, 3)
	p := startProcess(t, baseEnv(e.src.ConnectionString(), e.dst.ConnectionString(), map[string]string{"DITTO_CREATE_SUBSCRIPTIONS": "true"}))
	e.waitIdentical(t, verify.Options{Streams: streams})
	if !strings.Contains(p.output.String(), "created subscription group") {
		t.Fatalf("creation not logged:\n%s", p.output)
	}
	stopGracefully(t, p)
}

// replicateOne runs ditto in-process over evs appended to a fresh stream and
// returns the destination's copy.
func replicateOne(t *testing.T, evs ...esdb.EventData) []*esdb.RecordedEvent {
	t.Helper()
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	stream := "customer-" + uuid.NewString()[:8]
	appendEvents(t, e.srcC, stream, esdb.NoStream{}, evs...)
	startDitto(t, e, nil)
	e.waitIdentical(t, verify.Options{Streams: []string{stream}})
	return readAll(t, e.dstC, stream)
}

func testBinaryData(t *testing.T) {
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	evs := []esdb.EventData{
		{EventID: uuid.New(), EventType: "bin", ContentType: esdb.ContentTypeBinary, Data: all, Metadata: []byte{0xff, 0xfe, 0, 0xc3, 0x28}},
		{EventID: uuid.New(), EventType: "json-with-binary-metadata", ContentType: esdb.ContentTypeJson, Data: []byte(`{"a":1}`), Metadata: []byte{0, 0, 0}},
	}
	got := replicateOne(t, evs...)
	for i := range evs {
		if !bytes.Equal(got[i].Data, evs[i].Data) || !bytes.Equal(got[i].UserMetadata, evs[i].Metadata) || got[i].EventID != evs[i].EventID {
			t.Fatalf("event %d not copied byte-exact", i)
		}
	}
	if got[0].ContentType != "application/octet-stream" || got[1].ContentType != "application/json" {
		t.Fatalf("content types %q, %q", got[0].ContentType, got[1].ContentType)
	}
}

func testEmptyData(t *testing.T) {
	evs := []esdb.EventData{
		{EventID: uuid.New(), EventType: "empty-json", ContentType: esdb.ContentTypeJson},
		{EventID: uuid.New(), EventType: "empty-bin", ContentType: esdb.ContentTypeBinary, Data: []byte{}, Metadata: []byte{}},
	}
	got := replicateOne(t, evs...)
	for i := range got {
		if len(got[i].Data) != 0 || len(got[i].UserMetadata) != 0 {
			t.Fatalf("event %d: data %q, metadata %q", i, got[i].Data, got[i].UserMetadata)
		}
	}
}

func testInvalidJSON(t *testing.T) {
	ev := esdb.EventData{EventID: uuid.New(), EventType: "broken", ContentType: esdb.ContentTypeJson,
		Data: []byte(`{"unterminated": [1, 2`), Metadata: []byte(`not json either`)}
	got := replicateOne(t, ev)
	if string(got[0].Data) != string(ev.Data) || string(got[0].UserMetadata) != string(ev.Metadata) || got[0].ContentType != "application/json" {
		t.Fatalf("not copied as is: %q %q %q", got[0].Data, got[0].UserMetadata, got[0].ContentType)
	}
}

// testEventTooLarge: the destination accepts 4 KiB per append; an 8 KiB
// event is parked with the server's reason, its stream's later event waits
// as "behind" and is parked by the source after its retries, and other
// streams carry on.
func testEventTooLarge(t *testing.T) {
	src := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	dst := esdbtest.Start(t, esdbtest.Options{Insecure: true, MaxAppendSize: 4096})
	e := &env{src: src, dst: dst, srcC: mustClient(t, src.ConnectionString()), dstC: mustClient(t, dst.ConnectionString())}
	s := esdb.SubscriptionSettingsDefault()
	s.ResolveLinkTos = true
	s.MaxRetryCount = 2
	if err := e.srcC.CreatePersistentSubscription(context.Background(), "$ce-customer", "ditto",
		esdb.PersistentStreamSubscriptionOptions{Settings: &s, StartFrom: esdb.Start{}}); err != nil {
		t.Fatal(err)
	}
	big := "customer-big"
	appendEvents(t, e.srcC, big, esdb.NoStream{},
		esdb.EventData{EventID: uuid.New(), EventType: "huge", ContentType: esdb.ContentTypeBinary, Data: make([]byte, 8192)},
		esdb.EventData{EventID: uuid.New(), EventType: "after", ContentType: esdb.ContentTypeJson, Data: []byte(`{}`)})
	others := e.seed(t, "customer", 3, 3)
	r := startDitto(t, e, map[string]string{"DITTO_WRITE_RETRIES": "1"})
	e.waitIdentical(t, verify.Options{Streams: others})
	reasons := waitParked(t, e.srcC, 1, "Maximum Append Size of 4096")
	waitParked(t, e.srcC, 1, "Reached retry count of 2")
	t.Logf("park reasons: %q", reasons)
	testutil.Eventually(t, 10*time.Second, "one park counted by ditto", func() bool { return r.metric("parked") == 1 })
}

func testDestinationTombstoned(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 2, 3)
	if _, err := e.dstC.TombstoneStream(context.Background(), streams[0], esdb.TombstoneStreamOptions{ExpectedRevision: esdb.Any{}}); err != nil {
		t.Fatal(err)
	}
	startDitto(t, e, nil)
	e.waitIdentical(t, verify.Options{Streams: streams[1:]})
	waitParked(t, e.srcC, 3, "destination stream "+streams[0]+" is deleted")
}

// testDestinationSoftDeleted is the regression test for a silent
// renumbering: a soft-deleted destination stream accepted ditto's first
// append (expected no-stream) at its hidden end, so source event 0 landed
// as event 2 and was acked. Now the append is recognised and parked.
func testDestinationSoftDeleted(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 2, 3)
	// The destination held two other events in streams[0], then deleted it.
	appendEvents(t, e.dstC, streams[0], esdb.NoStream{}, testEvents(streams[0], 0, 2)...)
	if _, err := e.dstC.DeleteStream(context.Background(), streams[0], esdb.DeleteStreamOptions{ExpectedRevision: esdb.Any{}}); err != nil {
		t.Fatal(err)
	}
	startDitto(t, e, nil)
	e.waitIdentical(t, verify.Options{Streams: streams[1:]})
	reasons := waitParked(t, e.srcC, 3, "destination stream "+streams[0]+" diverged at 0")
	if !strings.Contains(reasons[0], "soft-deleted") {
		t.Fatalf("reason %q does not say soft-deleted", reasons[0])
	}
}

func testDestinationDiverged(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	stream := "customer-div"
	evs := testEvents(stream, 0, 4)
	appendEvents(t, e.srcC, stream, esdb.NoStream{}, evs...)
	// The destination has the first two events, then a foreign one at 2.
	appendEvents(t, e.dstC, stream, esdb.NoStream{}, evs[0], evs[1], testEvents(stream, 2, 1)[0])
	startDitto(t, e, nil)
	waitParked(t, e.srcC, 2, "destination stream "+stream+" diverged at 2")
}

// testDivergedConflictStream: the destination holds a foreign event at 0;
// the source's events go to the conflicts stream with the reason, but the
// one whose metadata is binary, which is parked with both reasons.
func testDivergedConflictStream(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	stream := "customer-div"
	evs := testEvents(stream, 0, 5) // event 3 has binary metadata
	appendEvents(t, e.srcC, stream, esdb.NoStream{}, evs...)
	appendEvents(t, e.dstC, stream, esdb.NoStream{}, testEvents(stream, 0, 1)...)
	r := startDitto(t, e, map[string]string{"DITTO_CONFLICT_POLICY": "conflict-stream", "DITTO_BATCH_MAX_EVENTS": "2"})
	waitParked(t, e.srcC, 1, "destination stream "+stream+" diverged at 0: it holds event ")
	reasons := parked(t, e.srcC, "$ce-customer", "ditto")
	if len(reasons) != 1 || !strings.Contains(reasons[0], "; its metadata is not a JSON object, which cannot carry the reason into the conflicts stream ditto-conflicts") {
		t.Fatalf("park reasons %q", reasons)
	}
	var records []*esdb.RecordedEvent
	testutil.Eventually(t, 30*time.Second, "4 events in ditto-conflicts", func() bool {
		records = readIfAny(t, e.dstC, "ditto-conflicts")
		return len(records) == 4
	})
	for i, n := range []int{0, 1, 2, 4} {
		var md map[string]any
		if records[i].EventID != evs[n].EventID || json.Unmarshal(records[i].UserMetadata, &md) != nil ||
			md["$conflictStreamId"] != stream || md["$originalEventNumber"] != float64(n) ||
			!strings.Contains(fmt.Sprint(md["$conflictReason"]), "destination stream "+stream+" diverged at 0") {
			t.Fatalf("record %d: %s %s", i, records[i].EventID, records[i].UserMetadata)
		}
	}
	if got := readAll(t, e.dstC, stream); len(got) != 1 {
		t.Fatalf("the diverged stream holds %d events, want its own one", len(got))
	}
	testutil.Eventually(t, 10*time.Second, "counted by policy", func() bool {
		return counterValue(r.svc.metrics.Conflicts.WithLabelValues(metrics.App, "$ce-customer", "ditto", "conflict-stream")) == 4 &&
			counterValue(r.svc.metrics.Conflicts.WithLabelValues(metrics.App, "$ce-customer", "ditto", "park")) == 1
	})
}

func testUnresolvedLinks(t *testing.T) {
	e := newEnv(t)
	streams := e.seed(t, "customer", 2, 3)
	if _, err := e.srcC.DeleteStream(context.Background(), streams[0], esdb.DeleteStreamOptions{}); err != nil {
		t.Fatal(err)
	}
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	r := startDitto(t, e, nil)
	e.waitIdentical(t, verify.Options{Streams: streams[1:]})
	testutil.Eventually(t, 30*time.Second, "3 unresolved links counted", func() bool { return r.metric("unresolved") == 3 })
	if !strings.Contains(r.logs.String(), "skipping unresolved link") {
		t.Fatal("skip not logged")
	}
}

func testSourceDeletedMidRun(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 2, 3)
	r := startDitto(t, e, nil)
	e.waitIdentical(t, verify.Options{Streams: streams})
	if _, err := e.srcC.DeleteStream(context.Background(), streams[0], esdb.DeleteStreamOptions{}); err != nil {
		t.Fatal(err)
	}
	e.append(t, streams[1], 3, 2)
	e.waitIdentical(t, verify.Options{Streams: streams[1:]})
	testutil.Eventually(t, 30*time.Second, "the deletion's $metadata event skipped", func() bool { return r.metric("skipped") == 1 })
	// The copy stays on the destination; verify skips the deleted source stream.
	if got := readAll(t, e.dstC, streams[0]); len(got) != 3 {
		t.Fatalf("destination copy has %d events, want 3", len(got))
	}
	rep := e.compare(t, verify.Options{Streams: streams})
	if !rep.OK() || rep.Skipped != 1 {
		t.Fatalf("verify: ok %v, skipped %d", rep.OK(), rep.Skipped)
	}
}

func testSourceTombstonedMidRun(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 2, 3)
	r := startDitto(t, e, nil)
	e.waitIdentical(t, verify.Options{Streams: streams})
	if _, err := e.srcC.TombstoneStream(context.Background(), streams[0], esdb.TombstoneStreamOptions{ExpectedRevision: esdb.Any{}}); err != nil {
		t.Fatal(err)
	}
	e.append(t, streams[1], 3, 2)
	e.waitIdentical(t, verify.Options{Streams: streams[1:]})
	// The tombstone is linked from $ce-customer; the link resolves to
	// nothing (the stream is deleted) and is skipped as unresolved.
	testutil.Eventually(t, 30*time.Second, "the tombstone's link skipped", func() bool {
		return r.metric("unresolved")+r.metric("skipped") == 1
	})
	if n := len(parked(t, e.srcC, "$ce-customer", "ditto")); n != 0 {
		t.Fatalf("%d events parked: %q", n, parked(t, e.srcC, "$ce-customer", "ditto"))
	}
	if got := readAll(t, e.dstC, streams[0]); len(got) != 3 {
		t.Fatalf("destination copy has %d events, want 3", len(got))
	}
}

func testUnicodeStreams(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := []string{"customer-Zoë", "customer-東京-✓", "customer-emoji-🦀", "customer-with space"}
	for _, s := range streams {
		e.append(t, s, 0, 3)
	}
	startDitto(t, e, nil)
	e.waitIdentical(t, verify.Options{Streams: streams})
}

func testEscapedGroup(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto:eu,1", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 2, 3)
	startDitto(t, e, map[string]string{"DITTO_SUBSCRIPTIONS": `$ce-customer:ditto\:eu\,1`})
	e.waitIdentical(t, verify.Options{Streams: streams})
}

func testEscapedStream(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-ord:eu", "ditto", esdb.ConsumerStrategyPinned)
	streams := []string{"ord:eu-1", "ord:eu-2"}
	for _, s := range streams {
		e.append(t, s, 0, 3)
	}
	startDitto(t, e, map[string]string{"DITTO_SUBSCRIPTIONS": `$ce-ord\:eu:ditto`})
	e.waitIdentical(t, verify.Options{Streams: streams})
}
