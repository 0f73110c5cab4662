package config

import (
	"os"
	"strings"
	"testing"
)

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
		"DITTO_SOURCE_CONNECTION_STRING":      "esdb://admin:changeit@127.0.0.1:2113?tls=false",
		"DITTO_DESTINATION_CONNECTION_STRING": "esdb://127.0.0.1:4113?tls=false",
		"DITTO_SUBSCRIPTIONS":                 "$ce-customer:ditto-customer",
	}
}

func TestDefaults(t *testing.T) {
	setEnv(t, valid())
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.Sink != "eventstore" || c.BufferSize != 10000 || c.ConsumersPerSubscription != 1 || c.MetricsAddress != ":5000" ||
		c.LogLevel != "info" || c.LogFormat != "json" || c.SkipVersionCheck || c.ReadOnly || c.TimeToLive != 0 {
		t.Fatalf("unexpected defaults: %+v", c)
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
		{"destination missing", map[string]string{"DITTO_DESTINATION_CONNECTION_STRING": ""}, "DITTO_DESTINATION_CONNECTION_STRING is required when DITTO_SINK=eventstore"},
		{"source malformed", map[string]string{"DITTO_SOURCE_CONNECTION_STRING": "http://nope"}, "DITTO_SOURCE_CONNECTION_STRING is not a valid connection string"},
		{"destination malformed", map[string]string{"DITTO_DESTINATION_CONNECTION_STRING": "esdb://h:notaport"}, "DITTO_DESTINATION_CONNECTION_STRING is not a valid connection string"},
		// Regression: the client only rejected these when connecting, again and again.
		{"client certificate without key", map[string]string{"DITTO_SOURCE_CONNECTION_STRING": "esdb://h:2113?userCertFile=/tmp/u.crt"}, "both userCertFile and userKeyFile must be provided"},
		{"client certificate unreadable", map[string]string{"DITTO_DESTINATION_CONNECTION_STRING": "esdb://h:2113?userCertFile=/nonexistent/u.crt&userKeyFile=/nonexistent/u.key"}, "DITTO_DESTINATION_CONNECTION_STRING is not a valid connection string"},
		{"subscription without group", map[string]string{"DITTO_SUBSCRIPTIONS": "$ce-customer"}, `DITTO_SUBSCRIPTIONS="$ce-customer": "$ce-customer" is not stream:group`},
		{"subscription empty group", map[string]string{"DITTO_SUBSCRIPTIONS": "$ce-a:"}, "empty stream or group"},
		{"subscription twice", map[string]string{"DITTO_SUBSCRIPTIONS": "a:b,a:b"}, "listed twice"},
		{"unknown sink", map[string]string{"DITTO_SINK": "kafka2"}, `DITTO_SINK="kafka2" is not a known sink`},
		{"buffer not a number", map[string]string{"DITTO_BUFFER_SIZE": "ten"}, `DITTO_BUFFER_SIZE="ten" is not a valid integer`},
		{"buffer zero", map[string]string{"DITTO_BUFFER_SIZE": "0"}, "DITTO_BUFFER_SIZE=0 is out of range"},
		{"consumers too many", map[string]string{"DITTO_CONSUMERS_PER_SUBSCRIPTION": "65"}, "DITTO_CONSUMERS_PER_SUBSCRIPTION=65 is out of range"},
		{"skip version not bool", map[string]string{"DITTO_SKIP_VERSION_CHECK": "maybe"}, `DITTO_SKIP_VERSION_CHECK="maybe" is not a valid boolean`},
		{"throttle not duration", map[string]string{"DITTO_REPLICATION_THROTTLE_INTERVAL": "5"}, `DITTO_REPLICATION_THROTTLE_INTERVAL="5" is not a valid duration`},
		{"throttle negative", map[string]string{"DITTO_REPLICATION_THROTTLE_INTERVAL": "-1s"}, "DITTO_REPLICATION_THROTTLE_INTERVAL=-1s must not be negative"},
		{"ttl below a second", map[string]string{"DITTO_TIME_TO_LIVE": "500ms"}, "DITTO_TIME_TO_LIVE=500ms is below the 1s resolution"},
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

func TestAllProblemsReportedAtOnce(t *testing.T) {
	setEnv(t, map[string]string{"DITTO_BUFFER_SIZE": "0", "DITTO_LOG_LEVEL": "loud"})
	_, err := Load()
	var ce *Error
	if err == nil || !asError(err, &ce) || len(ce.Problems) != 5 {
		t.Fatalf("want 5 problems (source, subscriptions, destination, buffer, log level), got %v", err)
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
