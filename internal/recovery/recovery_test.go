package recovery_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/recovery"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/sinks"
	"github.com/ditto-replicator/ditto/sinks/eventstore"
)

func client(t *testing.T, srv *esdbtest.Server) *esdb.Client {
	t.Helper()
	return esdbtest.Connect(t, esdbtest.Config(t, srv.ConnectionString()))
}

// checkpointAt creates $ce-c::ditto (a checkpoint after every ack) and
// acks its first n events.
func checkpointAt(t *testing.T, c *esdb.Client, n int) {
	testutil.AckFirst(t, c, "$ce-c", "ditto", esdb.Start{}, n)
}

// created is the creation time of event n of stream on c.
func created(t *testing.T, c *esdb.Client, stream string, n uint64) time.Time {
	t.Helper()
	rs, err := c.ReadStream(context.Background(), stream, esdb.ReadStreamOptions{From: esdb.Revision(n)}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	ev, err := rs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return ev.Event.CreatedDate
}

func holder(t *testing.T, srv *esdbtest.Server) sinks.Holder {
	t.Helper()
	p, _ := sinks.Lookup("eventstore")
	s, err := p.Open(context.Background(), &eventstore.Settings{DestinationConnectionString: srv.ConnectionString(), BatchAppend: true}, sinks.Env{Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s.(sinks.Holder)
}

// The source: c-a:0..3 and c-b:0..2 interleaved; the group checkpointed
// at 2 (after c-a:0, c-b:0, c-a:1), so c-b:1, c-a:2, c-b:2, c-a:3 follow.
var sourceOrder = []string{"c-a:0", "c-b:0", "c-a:1", "c-b:1", "c-a:2", "c-b:2", "c-a:3"}

func TestRecoveryPoint(t *testing.T) {
	srcSrv := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	src := client(t, srcSrv)
	testutil.AppendInOrder(t, src, sourceOrder...)
	checkpointAt(t, src, 3)
	now := time.Now().Add(time.Hour)
	opts := recovery.Options{Now: func() time.Time { return now }}

	// No destination to ask: every event after the checkpoint.
	p, err := recovery.Measure(context.Background(), src, nil, "$ce-c", "ditto", opts)
	if err != nil {
		t.Fatal(err)
	}
	oldest := created(t, src, "c-b", 1)
	if p.Events != 4 || p.Exact || p.AfterCheckpoint != 4 || p.SourceLast != 6 || p.Checkpoint == nil || *p.Checkpoint != 2 ||
		!p.Oldest.Equal(oldest) || p.Seconds != now.Sub(oldest).Seconds() {
		t.Fatalf("without a destination: %+v (oldest want %s)", p, oldest)
	}

	// The destination holds c-a up to 2 and c-b up to 0: c-b:1, c-b:2 and
	// c-a:3 are missing, c-b:1 the oldest.
	dstSrv := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	testutil.AppendInOrder(t, client(t, dstSrv), "c-a:0", "c-a:1", "c-b:0", "c-a:2")
	h := holder(t, dstSrv)
	if p, err = recovery.Measure(context.Background(), src, h, "$ce-c", "ditto", opts); err != nil {
		t.Fatal(err)
	}
	if p.Events != 3 || !p.Exact || !p.Oldest.Equal(oldest) {
		t.Fatalf("partly copied: %+v", p)
	}
	// Only c-a:3 missing: it is the oldest.
	testutil.AppendInOrder(t, client(t, dstSrv), "c-b:1", "c-b:2")
	if p, err = recovery.Measure(context.Background(), src, h, "$ce-c", "ditto", opts); err != nil {
		t.Fatal(err)
	}
	if want := created(t, src, "c-a", 3); p.Events != 1 || !p.Exact || !p.Oldest.Equal(want) {
		t.Fatalf("one missing: %+v", p)
	}
	// A scan capped at 2 events counts the rest as missing.
	capped := opts
	capped.MaxScan = 2
	if p, err = recovery.Measure(context.Background(), src, h, "$ce-c", "ditto", capped); err != nil {
		t.Fatal(err)
	}
	if want := created(t, src, "c-b", 2); p.Events != 2 || p.Exact || !p.Oldest.Equal(want) {
		t.Fatalf("capped: %+v", p)
	}
	// Everything copied: nothing lost.
	testutil.AppendInOrder(t, client(t, dstSrv), "c-a:3")
	if p, err = recovery.Measure(context.Background(), src, h, "$ce-c", "ditto", opts); err != nil {
		t.Fatal(err)
	}
	if p.Events != 0 || p.Seconds != 0 || !p.Exact {
		t.Fatalf("all copied: %+v", p)
	}
	// A missing group is an error naming it.
	if _, err := recovery.Measure(context.Background(), src, h, "$ce-c", "nope", opts); err == nil || !strings.Contains(err.Error(), "$ce-c::nope") {
		t.Fatalf("missing group: %v", err)
	}
}

// A group that has read everything and checkpointed the end is caught up
// whatever the destination.
func TestRecoveryPointCaughtUp(t *testing.T) {
	src := client(t, esdbtest.Start(t, esdbtest.Options{Insecure: true}))
	testutil.AppendInOrder(t, src, sourceOrder...)
	checkpointAt(t, src, len(sourceOrder))
	p, err := recovery.Measure(context.Background(), src, nil, "$ce-c", "ditto", recovery.Options{})
	if err != nil || p.Events != 0 || p.AfterCheckpoint != 0 || !p.Exact {
		t.Fatalf("%+v %v", p, err)
	}
}
