package esdbtest

import (
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
)

// Config parses a connection string for a test, with the client's own
// logging off.
func Config(t testing.TB, connectionString string) *esdb.Configuration {
	t.Helper()
	conf, err := esdb.ParseConnectionString(connectionString)
	if err != nil {
		t.Fatalf("parse connection string: %v", err)
	}
	conf.Logger = esdb.NoopLogging()
	return conf
}

// Connect returns a client of conf, closed when the test ends (Close may be
// called again: the client's Close is idempotent).
func Connect(t testing.TB, conf *esdb.Configuration) *esdb.Client {
	t.Helper()
	c, err := esdb.NewClient(conf)
	if err != nil {
		t.Fatalf("new client: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
