package esdbconn

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/testutil"
)

func dialer(t *testing.T, cs string) func() (*esdb.Client, error) {
	return func() (*esdb.Client, error) {
		conf, err := esdb.ParseConnectionString(cs)
		if err != nil {
			return nil, err
		}
		conf.Logger = esdb.NoopLogging()
		return esdb.NewClient(conf)
	}
}

func appendOne(c *esdb.Client) error {
	_, err := c.AppendToStream(context.Background(), "s", esdb.AppendToStreamOptions{},
		esdb.EventData{EventType: "t", ContentType: esdb.ContentTypeBinary, Data: []byte{1}})
	return err
}

// TestRenewAfterClientClosedItself is the regression test for "ditto never
// reconnects after an outage": a v4 client whose discovery fails once (the
// server was down) is closed for good; Renew replaces it, and the
// replacement works once the server is back.
func TestRenewAfterClientClosedItself(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // the server is down
	dial := dialer(t, "esdb://"+addr+"?tls=false&maxDiscoverAttempts=2")
	first, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	c := New(first, dial)
	defer c.Close()

	err = appendOne(c.Get())
	if err == nil {
		t.Fatal("append to a server that is down succeeded")
	}
	c.Renew(first, err) // not "closed" yet: the discovery error itself
	used := c.Get()
	err = appendOne(used)
	if !IsClosed(err) {
		t.Fatalf("second call: %v, want the client closed for good", err)
	}

	esdbtest.Start(t, esdbtest.Options{Insecure: true, Addr: addr}) // the server is back
	if err := appendOne(used); !IsClosed(err) {
		t.Fatalf("the closed client came back (%v): the workaround may be obsolete", err)
	}
	if !c.Renew(used, err) {
		t.Fatal("Renew did not replace the closed client")
	}
	if c.Get() == used {
		t.Fatal("Get returns the closed client")
	}
	if err := appendOne(c.Get()); err != nil {
		t.Fatalf("append through the renewed client: %v", err)
	}
	// A stale Renew (on the old client) keeps the new one.
	fresh := c.Get()
	if !c.Renew(used, err) || c.Get() != fresh {
		t.Fatal("a stale Renew replaced the fresh client")
	}
}

func TestRenewIgnoresOtherErrors(t *testing.T) {
	srv := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	dial := dialer(t, srv.ConnectionString())
	first, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	c := New(first, dial)
	_, err = first.ReadStream(context.Background(), "missing", esdb.ReadStreamOptions{}, 1)
	if c.Renew(first, err) || c.Get() != first {
		t.Fatal("Renew replaced a working client")
	}
	c.Close()
	if c.Renew(first, &esdb.Error{}) {
		t.Fatal("Renew after Close")
	}
	if New(first, nil).Renew(first, err) {
		t.Fatal("Renew without a dial function")
	}
}

// TestConcurrentCallsDuringFailedDiscoveryReturn is the regression test for
// writers stuck for good: when a v4 client's discovery fails, the calls
// queued behind it are never answered, whatever their context. Call returns
// for every one of them, and once the server is back the next calls work.
func TestConcurrentCallsDuringFailedDiscoveryReturn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dial := dialer(t, "esdb://"+addr+"?tls=false")
	first, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	c := New(first, dial)
	defer c.Close()
	const callers = 8
	errs := make(chan error, callers)
	for i := 0; i < callers; i++ {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_, err := Call(ctx, c, func(client *esdb.Client, _ func() bool) (struct{}, error) {
				return struct{}{}, appendOne(client)
			})
			errs <- err
		}()
	}
	abandoned := 0
	for i := 0; i < callers; i++ {
		select {
		case err := <-errs:
			if err == nil {
				t.Fatal("a call to a server that is down succeeded")
			}
			if errors.Is(err, ErrAbandoned) {
				abandoned++
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%d of %d calls never returned", callers-i, callers)
		}
	}
	t.Logf("%d of %d calls were abandoned inside the client", abandoned, callers)

	esdbtest.Start(t, esdbtest.Options{Insecure: true, Addr: addr})
	testutil.Eventually(t, 30*time.Second, "calls work once the server is back", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := Call(ctx, c, func(client *esdb.Client, _ func() bool) (struct{}, error) {
			return struct{}{}, appendOne(client)
		})
		return err == nil
	})
}
