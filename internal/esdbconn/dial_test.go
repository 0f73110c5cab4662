package esdbconn

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
)

// deadAddr is a 127.0.0.1 address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func supportsBatchAppend(t *testing.T, cs string) (bool, error) {
	t.Helper()
	conf, err := esdb.ParseConnectionString(cs)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := DialLeader(context.Background(), conf, "")
	if err != nil {
		return false, err
	}
	defer conn.Close()
	return Supports(context.Background(), conn, "event_store.client.streams.streams", "batchappend")
}

// TestDialLeader reaches a server the ways a connection string can name it:
// one address, over TLS with credentials checked, and through gossip seeds
// of which the first is down.
func TestDialLeader(t *testing.T) {
	plain := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	secure := esdbtest.Start(t, esdbtest.Options{})
	for name, cs := range map[string]string{
		"single node":  plain.ConnectionString(),
		"tls and auth": fmt.Sprintf("esdb://admin:changeit@%s?tls=true&tlsCAFile=%s", secure.Addr(), secure.CAFile()),
		"gossip seeds": fmt.Sprintf("esdb://%s,%s?tls=false&gossipTimeout=2", deadAddr(t), plain.Addr()),
	} {
		t.Run(name, func(t *testing.T) {
			ok, err := supportsBatchAppend(t, cs)
			if err != nil || !ok {
				t.Fatalf("Supports = %v, %v; want true", ok, err)
			}
		})
	}
}

// TestDialLeaderFailures: wrong credentials and a cluster with no live seed
// are errors, and a server without BatchAppend says so.
func TestDialLeaderFailures(t *testing.T) {
	secure := esdbtest.Start(t, esdbtest.Options{})
	if _, err := supportsBatchAppend(t, fmt.Sprintf("esdb://admin:wrong@%s?tls=true&tlsCAFile=%s", secure.Addr(), secure.CAFile())); err == nil {
		t.Error("wrong credentials: no error")
	}
	if _, err := supportsBatchAppend(t, fmt.Sprintf("esdb://%s,%s?tls=false&gossipTimeout=1", deadAddr(t), deadAddr(t))); err == nil || !strings.Contains(err.Error(), "no seed named a live leader") {
		t.Errorf("no live seed: err = %v", err)
	}
	old := esdbtest.Start(t, esdbtest.Options{Insecure: true, DisableBatchAppend: true})
	if ok, err := supportsBatchAppend(t, old.ConnectionString()); ok || err != nil {
		t.Errorf("server without BatchAppend: Supports = %v, %v; want false, nil", ok, err)
	}
}
