package esdbtest

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
)

// startInsecure starts a plaintext server and a client for it.
func startInsecure(t testing.TB) (*Server, *esdb.Client) {
	t.Helper()
	srv := Start(t, Options{Insecure: true})
	return srv, Connect(t, Config(t, srv.ConnectionString()))
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// ev is a JSON test event with a fresh id.
func ev(typ string) esdb.EventData {
	return esdb.EventData{EventID: uuid.New(), EventType: typ, ContentType: esdb.ContentTypeJson, Data: []byte(`{"a":1}`)}
}

// readAllOf reads a whole stream forwards; a read error is returned as is.
func readAllOf(ctx context.Context, c *esdb.Client, stream string, resolve bool) ([]*esdb.ResolvedEvent, error) {
	rs, err := c.ReadStream(ctx, stream, esdb.ReadStreamOptions{From: esdb.Start{}, ResolveLinkTos: resolve}, 10_000)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []*esdb.ResolvedEvent
	for {
		e, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, e)
	}
}

// errCode is the client error code of err, failing the test if err is nil.
func errCode(t testing.TB, err error) esdb.ErrorCode {
	t.Helper()
	if err == nil {
		t.Fatalf("expected an error, got nil")
	}
	// Some client calls wrap the *esdb.Error with context.
	var e *esdb.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not an esdb error", err)
	}
	return e.Code()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServerFeaturesAndSystemEvents(t *testing.T) {
	_, c := startInsecure(t)
	ctx := testCtx(t)
	v, err := c.GetServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.Major < 23 {
		t.Fatalf("server version %+v, want >= 23.10", v)
	}
	users, err := readAllOf(ctx, c, "$users", true)
	if err != nil || len(users) == 0 {
		t.Fatalf("$users: %d events, %v; a fresh server must hold the default users", len(users), err)
	}
	if users[0].Event == nil || users[0].Event.StreamID != "$user-admin" {
		t.Fatalf("$users[0] should resolve to $user-admin, got %+v", users[0])
	}
}

func TestClusterDiscoveryUsesDialledAddress(t *testing.T) {
	srv := Start(t, Options{})
	// A gossip-seed connection string makes the client call Gossip.Read and
	// then connect to the member it returns.
	c := Connect(t, Config(t, "esdb://admin:changeit@"+srv.Addr()+"?tlsverifycert=false&maxDiscoverAttempts=3"))
	if _, err := c.AppendToStream(testCtx(t), "cluster-1", esdb.AppendToStreamOptions{}, ev("E")); err != nil {
		t.Fatalf("append through discovery: %v", err)
	}
}

func TestCAFileVerifies(t *testing.T) {
	srv := Start(t, Options{})
	c := Connect(t, Config(t, "esdb://admin:changeit@"+srv.Addr()+"?tls=true&tlsCAFile="+srv.CAFile()))
	if _, err := c.AppendToStream(testCtx(t), "verified-1", esdb.AppendToStreamOptions{}, ev("E")); err != nil {
		t.Fatalf("append with a verified certificate: %v", err)
	}
}

func TestWrongCredentialsUnauthenticated(t *testing.T) {
	srv := Start(t, Options{})
	ctx := testCtx(t)
	bad := Connect(t, Config(t, "esdb://admin:wrong@"+srv.Addr()+"?tls=true&tlsverifycert=false"))
	_, err := bad.AppendToStream(ctx, "auth-1", esdb.AppendToStreamOptions{}, ev("E"))
	if code := errCode(t, err); code != esdb.ErrorCodeUnauthenticated {
		t.Fatalf("append with a wrong password: code %v, want Unauthenticated", code)
	}
	good := Connect(t, Config(t, srv.ConnectionString()))
	if _, err := good.AppendToStream(ctx, "auth-1", esdb.AppendToStreamOptions{}, ev("E")); err != nil {
		t.Fatalf("append as admin: %v", err)
	}
	// Per-call credentials override the connection's.
	_, err = good.AppendToStream(ctx, "auth-1", esdb.AppendToStreamOptions{
		Authenticated: &esdb.Credentials{Login: "ops", Password: "nope"}}, ev("E"))
	if code := errCode(t, err); code != esdb.ErrorCodeUnauthenticated {
		t.Fatalf("per-call wrong credentials: code %v, want Unauthenticated", code)
	}
	if _, err := good.AppendToStream(ctx, "auth-1", esdb.AppendToStreamOptions{
		Authenticated: &esdb.Credentials{Login: "ops", Password: "changeit"}}, ev("E")); err != nil {
		t.Fatalf("append as ops: %v", err)
	}
}

func TestCloseEndsSubscriptions(t *testing.T) {
	srv, c := startInsecure(t)
	sub, err := c.SubscribeToStream(testCtx(t), "closing-1", esdb.SubscribeToStreamOptions{From: esdb.Start{}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if e := sub.Recv(); e.CaughtUp == nil {
		t.Fatalf("first message %+v, want caught up", e)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	for {
		if e := sub.Recv(); e.SubscriptionDropped != nil {
			return
		}
	}
}
