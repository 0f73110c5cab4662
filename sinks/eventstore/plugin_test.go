package eventstore

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/sinks"
)

// loadEnv loads ditto's configuration with only vars set among DITTO_*.
func loadEnv(t *testing.T, vars map[string]string) (*config.Config, error) {
	t.Helper()
	return testutil.LoadConfig(t, map[string]string{
		"DITTO_SOURCE_CONNECTION_STRING":      "esdb://127.0.0.1:2113?tls=false",
		"DITTO_SUBSCRIPTIONS":                 "$ce-customer:ditto",
		"DITTO_DESTINATION_CONNECTION_STRING": "esdb://admin:changeit@127.0.0.1:4113?tls=false",
	}, vars)
}

func TestSettings(t *testing.T) {
	c, err := loadEnv(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, ok := c.SinkSettings.(*Settings)
	if !ok || c.Sink != "eventstore" {
		t.Fatalf("sink %q, settings %#v", c.Sink, c.SinkSettings)
	}
	if s.SkipVersionCheck || s.TimeToLive != 0 || !s.BatchAppend || s.DestinationConnectionString == "" {
		t.Fatalf("unexpected defaults: %+v", s)
	}
	if c.Writers != 32 {
		t.Fatalf("writers = %d, want ditto's default 32", c.Writers)
	}
	cases := []struct{ name, variable, value, want string }{
		{"destination missing", "DITTO_DESTINATION_CONNECTION_STRING", "", "DITTO_DESTINATION_CONNECTION_STRING is required when DITTO_SINK=eventstore"},
		{"destination malformed", "DITTO_DESTINATION_CONNECTION_STRING", "esdb://admin:pw-77@h:notaport", "DITTO_DESTINATION_CONNECTION_STRING is not a valid connection string (esdb://admin:xxxxx@h:notaport)"},
		{"client certificate unreadable", "DITTO_DESTINATION_CONNECTION_STRING", "esdb://h:2113?userCertFile=/nonexistent/u.crt&userKeyFile=/nonexistent/u.key", "client certificate: open /nonexistent/u.crt"},
		{"skip version not bool", "DITTO_SKIP_VERSION_CHECK", "maybe", `DITTO_SKIP_VERSION_CHECK="maybe" is not a valid boolean`},
		{"ttl below a second", "DITTO_TIME_TO_LIVE", "500ms", "DITTO_TIME_TO_LIVE=500ms is below the 1s resolution"},
		{"ttl negative", "DITTO_TIME_TO_LIVE", "-1s", "DITTO_TIME_TO_LIVE=-1s must not be negative"},
		{"batch append not bool", "DITTO_BATCH_APPEND", "sometimes", `DITTO_BATCH_APPEND="sometimes" is not a valid boolean`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadEnv(t, map[string]string{tc.variable: tc.value})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "pw-77") {
				t.Fatalf("the password leaked: %v", err)
			}
		})
	}
	// Read-only runs need no destination.
	if _, err := loadEnv(t, map[string]string{"DITTO_DESTINATION_CONNECTION_STRING": "", "DITTO_READ_ONLY": "true"}); err != nil {
		t.Fatal(err)
	}
}

// The plugin opens a sink that writes, with its settings, and whose probe
// turns rejected credentials into a fatal error.
func TestPluginOpens(t *testing.T) {
	srv := esdbtest.Start(t, esdbtest.Options{}) // TLS with basic auth
	p, ok := sinks.Lookup("eventstore")
	if !ok {
		t.Fatal("eventstore is not registered")
	}
	open := func(cs string) sinks.Sink {
		t.Helper()
		s, err := p.Open(context.Background(), &Settings{DestinationConnectionString: cs, BatchAppend: true}, sinks.Env{Log: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	good := open(srv.ConnectionString())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := good.(sinks.Readier).Ready(ctx); err != nil {
		t.Fatalf("ready: %v", err)
	}
	if err := good.Write(ctx, "customer-1", events("customer-1", 0, 3)); err != nil {
		t.Fatalf("write: %v", err)
	}
	bad := open("esdb://admin:Wr0ng-Pa55@" + srv.Addr() + "?tls=true&tlsCAFile=" + srv.CAFile())
	err := bad.(sinks.Readier).Ready(ctx)
	if !sinks.IsFatal(err) || !strings.Contains(err.Error(), "DITTO_DESTINATION_CONNECTION_STRING: the destination rejected the credentials") {
		t.Fatalf("ready with a wrong password: %v", err)
	}
	if strings.Contains(err.Error(), "Wr0ng-Pa55") {
		t.Fatalf("the password leaked: %v", err)
	}
	var fe *sinks.FatalError
	if !errors.As(err, &fe) {
		t.Fatal("not a *sinks.FatalError")
	}
}
