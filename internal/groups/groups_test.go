package groups_test

import (
	"context"
	"strings"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/groups"
	"github.com/ditto-replicator/ditto/internal/testutil"
)

type side struct {
	srv *esdbtest.Server
	c   *esdb.Client
}

func start(t *testing.T) side {
	t.Helper()
	srv := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	return side{srv, esdbtest.Connect(t, esdbtest.Config(t, srv.ConnectionString()))}
}

// write appends one event to each "stream:n" in order (n must be the
// stream's next number), so that the category stream holds them in that
// order.
func (s side) write(t *testing.T, order ...string) {
	t.Helper()
	testutil.AppendInOrder(t, s.c, order...)
}

// group creates $ce-c::app with a checkpoint after every ack and acks the
// first n events, waiting for the checkpoint.
func (s side) group(t *testing.T, from esdb.StreamPosition, acks int) {
	t.Helper()
	testutil.AckFirst(t, s.c, "$ce-c", "app", from, acks)
}

func copyOne(t *testing.T, src, dst side, opts groups.Options) groups.Result {
	t.Helper()
	opts.Groups = []groups.Group{{Stream: "$ce-c", Name: "app"}}
	res, err := groups.Copy(context.Background(), src.c, dst.c, opts)
	if err != nil || len(res) != 1 {
		t.Fatalf("copy: %v %+v", err, res)
	}
	return res[0]
}

func TestPlacement(t *testing.T) {
	cases := []struct {
		name     string
		source   []string // order on the source
		dest     []string // order on the destination
		from     esdb.StreamPosition
		acks     int
		start    uint64
		replays  int
		notYet   int
		hasCheck bool
	}{
		// c-a:1 and c-b:1 are after the checkpoint (at 1); on the
		// destination c-b:0 comes after c-a:1, so it is replayed.
		{"interleaved", []string{"c-a:0", "c-b:0", "c-a:1", "c-b:1"}, []string{"c-a:0", "c-a:1", "c-b:0", "c-b:1"}, esdb.Start{}, 2, 1, 1, 0, true},
		// Nothing acked, no checkpoint: the group's own start, 0.
		{"no checkpoint", []string{"c-a:0", "c-b:0"}, []string{"c-b:0", "c-a:0"}, esdb.Start{}, 0, 0, 0, 0, false},
		// From revision 1 without a checkpoint: c-b:0 onwards.
		{"start revision", []string{"c-a:0", "c-b:0", "c-a:1"}, []string{"c-a:0", "c-a:1", "c-b:0"}, esdb.Revision(1), 0, 1, 0, 0, false},
		// Caught up: the destination's end, nothing replayed.
		{"caught up", []string{"c-a:0", "c-b:0"}, []string{"c-b:0", "c-a:0"}, esdb.Start{}, 2, 2, 0, 0, true},
		// c-b's events after the checkpoint are not on the destination
		// yet: they will come after its end; c-a:1 is the start.
		{"partly copied", []string{"c-a:0", "c-b:0", "c-a:1", "c-b:1"}, []string{"c-a:0", "c-b:0", "c-a:1"}, esdb.Start{}, 2, 2, 0, 1, true},
		{"nothing after copied", []string{"c-a:0", "c-b:0", "c-a:1"}, []string{"c-a:0", "c-b:0"}, esdb.Start{}, 2, 2, 0, 1, true},
		// Events of the destination's own in the category are replays.
		{"local events", []string{"c-a:0", "c-a:1"}, []string{"c-a:0", "c-local:0", "c-a:1", "c-local:1"}, esdb.Start{}, 1, 2, 1, 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := start(t), start(t)
			src.write(t, tc.source...)
			dst.write(t, tc.dest...)
			src.group(t, tc.from, tc.acks)
			r := copyOne(t, src, dst, groups.Options{})
			if r.Outcome != groups.OutcomeCreated || r.Start != tc.start || r.Replays != tc.replays || r.NotYetCopied != tc.notYet || (r.Checkpoint != nil) != tc.hasCheck {
				t.Fatalf("result %+v; want start %d, %d replays, %d streams not yet copied", r, tc.start, tc.replays, tc.notYet)
			}
			info, err := dst.c.GetPersistentSubscriptionInfo(context.Background(), "$ce-c", "app", esdb.GetPersistentSubscriptionOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var want any = esdb.Revision(tc.start)
			if tc.start == 0 {
				want = esdb.Start{}
			}
			if info.Settings.StartFrom != want || !info.Settings.ResolveLinkTos || info.Settings.ConsumerStrategyName != esdb.ConsumerStrategyDispatchToSingle {
				t.Fatalf("destination group %+v", info.Settings)
			}
		})
	}
}

// A group that starts at the end without a checkpoint starts at the
// source's end now, as the source itself would after a restart.
func TestEndWithoutCheckpoint(t *testing.T) {
	src, dst := start(t), start(t)
	src.write(t, "c-a:0", "c-b:0")
	dst.write(t, "c-b:0", "c-a:0")
	src.group(t, esdb.End{}, 0)
	r := copyOne(t, src, dst, groups.Options{})
	if r.Next != 2 || r.After != 0 || r.Start != 2 {
		t.Fatalf("result %+v", r)
	}
}

func TestExistingMissingAndListed(t *testing.T) {
	src, dst := start(t), start(t)
	src.write(t, "c-a:0")
	dst.write(t, "c-a:0")
	src.group(t, esdb.Start{}, 0)
	ditto := esdb.SubscriptionSettingsDefault()
	if err := src.c.CreatePersistentSubscription(context.Background(), "$ce-c", "ditto", esdb.PersistentStreamSubscriptionOptions{Settings: &ditto}); err != nil {
		t.Fatal(err)
	}
	if r := copyOne(t, src, dst, groups.Options{DryRun: true}); r.Outcome != groups.OutcomePlanned {
		t.Fatalf("dry run: %+v", r)
	}
	// Listed from the stream, less the excluded group.
	res, err := groups.Copy(context.Background(), src.c, dst.c, groups.Options{Streams: []string{"$ce-c", "$ce-none"}, Exclude: []groups.Group{{Stream: "$ce-c", Name: "ditto"}}})
	if err != nil || len(res) != 1 || res[0].Name != "app" || res[0].Outcome != groups.OutcomeCreated {
		t.Fatalf("listed copy: %v %+v", err, res)
	}
	if r := copyOne(t, src, dst, groups.Options{}); r.Outcome != groups.OutcomeExists {
		t.Fatalf("second copy: %+v", r)
	}
	if r := copyOne(t, src, dst, groups.Options{Replace: true}); r.Outcome != groups.OutcomeReplaced {
		t.Fatalf("replace: %+v", r)
	}
	res, err = groups.Copy(context.Background(), src.c, dst.c, groups.Options{Groups: []groups.Group{{Stream: "$ce-c", Name: "nope"}}})
	if err != nil || res[0].Outcome != groups.OutcomeFailed || !strings.Contains(res[0].Error, "reading the group on the source") {
		t.Fatalf("missing group: %v %+v", err, res)
	}
}
