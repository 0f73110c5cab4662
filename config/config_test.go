package config

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/ditto-replicator/ditto/sinks"
)

// testSettings are the settings of testsink, a sink registered only in these
// tests, through which Load's handling of every sink's settings is checked
// (the real sinks test their own settings in their packages).
type testSettings struct {
	Endpoint string `envconfig:"TESTSINK_ENDPOINT" ditto:"required" secret:"true" desc:"Where testsink writes."`
	Records  int    `envconfig:"TESTSINK_RECORDS" default:"500" desc:"Records per call (1-500)."`
}

func (s *testSettings) Validate() []string {
	if s.Records < 1 || s.Records > 500 {
		return []string{fmt.Sprintf("DITTO_TESTSINK_RECORDS=%d is out of range: expected 1 to 500", s.Records)}
	}
	return nil
}

func init() {
	sinks.Register(sinks.Plugin{
		Name: "testsink", Summary: "a sink for config's tests.", Writers: 256,
		Settings: func() sinks.Settings { return &testSettings{} },
		Open:     func(context.Context, sinks.Settings, sinks.Env) (sinks.Sink, error) { return nil, nil },
	})
}

// setEnv clears every DITTO_ variable and sets vars for the test.
func setEnv(t *testing.T, vars map[string]string) {
	t.Helper()
	for _, v := range Variables() {
		t.Setenv(v.Name, "")
		os.Unsetenv(v.Name)
	}
	for k, v := range vars {
		t.Setenv(k, v)
	}
}

func valid() map[string]string {
	return map[string]string{
		"DITTO_SOURCE_CONNECTION_STRING": "esdb://admin:changeit@127.0.0.1:2113?tls=false",
		"DITTO_SUBSCRIPTIONS":            "$ce-customer:ditto-customer",
		"DITTO_SINK":                     "testsink",
		"DITTO_TESTSINK_ENDPOINT":        "https://user:hunter2@127.0.0.1:1",
	}
}

func TestDefaults(t *testing.T) {
	setEnv(t, valid())
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.BufferSize != 10000 || c.ConsumersPerSubscription != 1 || c.MetricsAddress != ":5000" ||
		c.LogLevel != "info" || c.LogFormat != "json" || c.ReadOnly {
		t.Fatalf("unexpected defaults: %+v", c)
	}
	if s, ok := c.SinkSettings.(*testSettings); !ok || s.Records != 500 || s.Endpoint != "https://user:hunter2@127.0.0.1:1" {
		t.Fatalf("sink settings = %#v", c.SinkSettings)
	}
	// The sink's default writers apply where DITTO_WRITERS is not set.
	if c.Writers != 256 {
		t.Fatalf("writers = %d, want testsink's 256", c.Writers)
	}
	for _, v := range Variables() {
		if v.Name == "DITTO_SINK" && v.Default != "eventstore" {
			t.Fatalf("DITTO_SINK defaults to %q", v.Default)
		}
	}
	subs := c.SubscriptionList()
	if len(subs) != 1 || subs[0] != (Subscription{Stream: "$ce-customer", Group: "ditto-customer"}) {
		t.Fatalf("subscriptions = %v", subs)
	}
}

func TestInvalidValuesNameTheVariable(t *testing.T) {
	cases := []struct {
		name string
		set  map[string]string
		want string // substring of the error
	}{
		{"source missing", map[string]string{"DITTO_SOURCE_CONNECTION_STRING": ""}, "DITTO_SOURCE_CONNECTION_STRING is required"},
		{"subscriptions missing", map[string]string{"DITTO_SUBSCRIPTIONS": ""}, "DITTO_SUBSCRIPTIONS is required"},
		{"sink setting missing", map[string]string{"DITTO_TESTSINK_ENDPOINT": ""}, "DITTO_TESTSINK_ENDPOINT is required when DITTO_SINK=testsink"},
		{"sink setting not a number", map[string]string{"DITTO_TESTSINK_RECORDS": "many"}, `DITTO_TESTSINK_RECORDS="many" is not a valid integer`},
		{"sink setting invalid", map[string]string{"DITTO_TESTSINK_RECORDS": "501"}, "DITTO_TESTSINK_RECORDS=501 is out of range"},
		{"source malformed", map[string]string{"DITTO_SOURCE_CONNECTION_STRING": "http://nope"}, "DITTO_SOURCE_CONNECTION_STRING is not a valid connection string"},
		// Regression: the client only rejected these when connecting, again and again.
		{"client certificate without key", map[string]string{"DITTO_SOURCE_CONNECTION_STRING": "esdb://h:2113?userCertFile=/tmp/u.crt"}, "both userCertFile and userKeyFile must be provided"},
		{"client certificate unreadable", map[string]string{"DITTO_SOURCE_CONNECTION_STRING": "esdb://h:2113?userCertFile=/nonexistent/u.crt&userKeyFile=/nonexistent/u.key"}, "DITTO_SOURCE_CONNECTION_STRING is not a valid connection string"},
		{"subscription without group", map[string]string{"DITTO_SUBSCRIPTIONS": "$ce-customer"}, `DITTO_SUBSCRIPTIONS="$ce-customer": "$ce-customer" is not stream:group`},
		{"subscription empty group", map[string]string{"DITTO_SUBSCRIPTIONS": "$ce-a:"}, "empty stream or group"},
		{"subscription twice", map[string]string{"DITTO_SUBSCRIPTIONS": "a:b,a:b"}, "listed twice"},
		{"unknown sink", map[string]string{"DITTO_SINK": "kafka2"}, `DITTO_SINK="kafka2" is not a known sink: expected testsink`},
		{"buffer not a number", map[string]string{"DITTO_BUFFER_SIZE": "ten"}, `DITTO_BUFFER_SIZE="ten" is not a valid integer`},
		{"buffer zero", map[string]string{"DITTO_BUFFER_SIZE": "0"}, "DITTO_BUFFER_SIZE=0 is out of range"},
		{"consumers too many", map[string]string{"DITTO_CONSUMERS_PER_SUBSCRIPTION": "65"}, "DITTO_CONSUMERS_PER_SUBSCRIPTION=65 is out of range"},
		{"throttle not duration", map[string]string{"DITTO_REPLICATION_THROTTLE_INTERVAL": "5"}, `DITTO_REPLICATION_THROTTLE_INTERVAL="5" is not a valid duration`},
		{"throttle negative", map[string]string{"DITTO_REPLICATION_THROTTLE_INTERVAL": "-1s"}, "DITTO_REPLICATION_THROTTLE_INTERVAL=-1s must not be negative"},
		{"read only not bool", map[string]string{"DITTO_READ_ONLY": "yes please"}, "DITTO_READ_ONLY"},
		{"create not bool", map[string]string{"DITTO_CREATE_SUBSCRIPTIONS": "2"}, "DITTO_CREATE_SUBSCRIPTIONS"},
		{"metrics address", map[string]string{"DITTO_METRICS_ADDRESS": "5000"}, `DITTO_METRICS_ADDRESS="5000" is not a host:port`},
		{"log level", map[string]string{"DITTO_LOG_LEVEL": "verbose"}, `DITTO_LOG_LEVEL="verbose"`},
		{"log format", map[string]string{"DITTO_LOG_FORMAT": "xml"}, `DITTO_LOG_FORMAT="xml"`},
		{"writers", map[string]string{"DITTO_WRITERS": "0"}, "DITTO_WRITERS=0 is out of range"},
		{"batch events", map[string]string{"DITTO_BATCH_MAX_EVENTS": "0"}, "DITTO_BATCH_MAX_EVENTS=0 is out of range"},
		{"batch bytes", map[string]string{"DITTO_BATCH_MAX_BYTES": "10"}, "DITTO_BATCH_MAX_BYTES=10 is out of range"},
		{"retries", map[string]string{"DITTO_WRITE_RETRIES": "0"}, "DITTO_WRITE_RETRIES=0 is out of range"},
		{"backoff max", map[string]string{"DITTO_RETRY_BACKOFF_MAX": "1ms"}, "DITTO_RETRY_BACKOFF_MAX=1ms must be at least 50ms"},
		{"shutdown timeout", map[string]string{"DITTO_SHUTDOWN_TIMEOUT": "0s"}, "DITTO_SHUTDOWN_TIMEOUT=0s must be positive"},
		{"stream pattern", map[string]string{"DITTO_INCLUDE_STREAMS": "/(/"}, "DITTO_INCLUDE_STREAMS: /(/ is not a valid regular expression"},
		{"type pattern", map[string]string{"DITTO_EXCLUDE_EVENT_TYPES": "/[/"}, "DITTO_EXCLUDE_EVENT_TYPES: /[/ is not a valid regular expression"},
		{"metadata pair", map[string]string{"DITTO_INCLUDE_METADATA": "tenant"}, "DITTO_INCLUDE_METADATA"},
		{"template", map[string]string{"DITTO_STREAM_TEMPLATE": "x-{nope}"}, "DITTO_STREAM_TEMPLATE"},
		{"consolidating two subscriptions", map[string]string{"DITTO_STREAM_TEMPLATE": "all", "DITTO_SUBSCRIPTIONS": "$ce-a:g,$ce-b:g"}, "consolidates the events of 2 subscriptions"},
		{"provenance not bool", map[string]string{"DITTO_PROVENANCE": "sure"}, `DITTO_PROVENANCE="sure" is not a valid boolean`},
		{"origin without provenance", map[string]string{"DITTO_ORIGIN_NAME": "eu"}, "DITTO_ORIGIN_NAME"},
		{"stream metadata on a sink without", map[string]string{"DITTO_COPY_STREAM_METADATA": "true"}, "DITTO_COPY_STREAM_METADATA=true: the testsink sink has no stream metadata"},
		{"ACL without stream metadata", map[string]string{"DITTO_COPY_STREAM_ACL": "true"}, "DITTO_COPY_STREAM_ACL=true needs DITTO_COPY_STREAM_METADATA=true"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vars := valid()
			for k, v := range tc.set {
				vars[k] = v
			}
			setEnv(t, vars)
			for k, v := range tc.set {
				if v == "" {
					os.Unsetenv(k)
				}
			}
			_, err := Load()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestPolicyCompiled(t *testing.T) {
	vars := valid()
	vars["DITTO_EXCLUDE_EVENT_TYPES"] = `Debug,/^Internal\d+$/`
	vars["DITTO_STREAM_TEMPLATE"] = "dr-{stream}"
	setEnv(t, vars)
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy == nil || c.Policy.Mode().String() != "filtered within a stream" || !c.Policy.Provenance() {
		t.Fatalf("policy %+v", c.Policy)
	}
	if _, keep := c.Policy.Keep("customer-1", "Internal42", nil); keep {
		t.Fatal("the regular expression was not applied")
	}
	if got := c.Policy.Destination("customer-1"); got != "dr-customer-1" {
		t.Fatalf("destination %q", got)
	}
	setEnv(t, valid())
	if c, err = Load(); err != nil || !c.Policy.Trivial() {
		t.Fatalf("default policy: %v, %+v", err, c)
	}
}

func TestAllProblemsReportedAtOnce(t *testing.T) {
	setEnv(t, map[string]string{"DITTO_BUFFER_SIZE": "0", "DITTO_LOG_LEVEL": "loud", "DITTO_SINK": "testsink", "DITTO_TESTSINK_RECORDS": "0"})
	_, err := Load()
	var ce *Error
	if err == nil || !asError(err, &ce) || len(ce.Problems) != 6 {
		t.Fatalf("want 6 problems (source, subscriptions, buffer, log level, the sink's endpoint and records), got %v", err)
	}
}

func TestReadOnlyReadsNoSinkSettings(t *testing.T) {
	vars := valid()
	vars["DITTO_READ_ONLY"] = "true"
	vars["DITTO_TESTSINK_ENDPOINT"] = ""
	vars["DITTO_TESTSINK_RECORDS"] = "0"
	setEnv(t, vars)
	os.Unsetenv("DITTO_TESTSINK_ENDPOINT")
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.SinkSettings != nil {
		t.Fatalf("a read-only run loaded sink settings %#v", c.SinkSettings)
	}
	// The name is still checked.
	t.Setenv("DITTO_SINK", "nosuchsink")
	if _, err := Load(); err == nil || !strings.Contains(err.Error(), `DITTO_SINK="nosuchsink" is not a known sink`) {
		t.Fatalf("err = %v", err)
	}
}

func TestSinkVariablesListedUnderTheSink(t *testing.T) {
	var usage, md strings.Builder
	PrintUsage(&usage)
	PrintMarkdown(&md)
	for _, out := range []string{usage.String(), md.String()} {
		i := strings.Index(out, "DITTO_SINK=testsink")
		j := strings.Index(out, "DITTO_TESTSINK_ENDPOINT")
		k := strings.Index(out, "DITTO_LOG_FORMAT")
		if i < 0 || j < i || k > i {
			t.Fatalf("testsink's variables are not listed under it, after ditto's own:\n%s", out)
		}
	}
}

func asError(err error, target **Error) bool {
	e, ok := err.(*Error)
	*target = e
	return ok
}

func TestPasswordNeverInErrors(t *testing.T) {
	vars := valid()
	vars["DITTO_SOURCE_CONNECTION_STRING"] = "esdb://admin:s3cr3t-pw@127.0.0.1:notaport?tls=false"
	setEnv(t, vars)
	_, err := Load()
	if err == nil {
		t.Fatal("want an error")
	}
	if strings.Contains(err.Error(), "s3cr3t-pw") {
		t.Fatalf("error leaks the password: %v", err)
	}
}

// A sink's secret setting that does not parse is redacted like ditto's own.
func TestSecretSinkSettingRedacted(t *testing.T) {
	type secretInt struct {
		Port int `envconfig:"TESTSINK_PORT" secret:"true" desc:"x"`
	}
	t.Setenv("DITTO_TESTSINK_PORT", "esdb://u:s3cr3t-pw@h")
	err := process(&secretInt{})
	if err == nil || strings.Contains(err.Error(), "s3cr3t-pw") || !strings.Contains(err.Error(), "DITTO_TESTSINK_PORT") {
		t.Fatalf("err = %v", err)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"esdb://admin:changeit@host:2113?tls=true":     "esdb://admin:xxxxx@host:2113?tls=true",
		"esdb+discover://u:p@a:1,b:2?tls=false":        "esdb+discover://u:xxxxx@a:1,b:2?tls=false",
		"esdb://host:2113":                             "esdb://host:2113",
		"esdb://host:2113?tls=false&password=hunter22": "esdb://host:2113?password=xxxxx&tls=false",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseSubscriptionsEscapes(t *testing.T) {
	subs, err := ParseSubscriptions(`$ce-customer:ditto, orders\:eu:g\,1 ,a:b:c`)
	if err != nil {
		t.Fatal(err)
	}
	want := []Subscription{{"$ce-customer", "ditto"}, {"orders:eu", "g,1"}, {"a:b", "c"}}
	if len(subs) != len(want) {
		t.Fatalf("got %v", subs)
	}
	for i := range want {
		if subs[i] != want[i] {
			t.Fatalf("got %v, want %v", subs, want)
		}
	}
}

func TestEveryVariableDocumented(t *testing.T) {
	for _, v := range Variables() {
		if v.Description == "" {
			t.Errorf("%s has no description", v.Name)
		}
	}
}
