package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/groups"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/verify"
)

// linkKey is the original event a $ce- link stands for, "n@stream".
func linkKey(ev *esdb.RecordedEvent) string {
	if ev.EventType == "$>" {
		return string(ev.Data)
	}
	return fmt.Sprintf("%d@%s", ev.EventNumber, ev.StreamID)
}

// delivery is one event a consumer received from a group.
type delivery struct {
	key string // n@stream of the original event
	ev  *esdb.ResolvedEvent
}

// consume reads n events from stream::group on c, acking each, and leaves
// the group once done holds (the acks reach the server before that).
func consume(t *testing.T, c *esdb.Client, stream, group string, n int, done func() bool) []delivery {
	t.Helper()
	sub, err := c.SubscribeToPersistentSubscription(context.Background(), stream, group, esdb.SubscribeToPersistentSubscriptionOptions{BufferSize: 10})
	if err != nil {
		t.Fatalf("subscribing to %s::%s: %v", stream, group, err)
	}
	defer sub.Close()
	if done != nil {
		defer testutil.Eventually(t, 30*time.Second, "the consumer's acks settled", done)
	}
	got := make(chan delivery, n)
	failed := make(chan error, 1)
	go func() {
		for received := 0; received < n; {
			e := sub.Recv()
			if e.SubscriptionDropped != nil {
				failed <- e.SubscriptionDropped.Error
				return
			}
			if e.EventAppeared == nil {
				continue
			}
			ev := e.EventAppeared.Event
			if err := sub.Ack(ev); err != nil {
				failed <- err
				return
			}
			got <- delivery{key: fmt.Sprintf("%d@%s", ev.Event.EventNumber, ev.Event.StreamID), ev: ev}
			received++
		}
	}()
	var out []delivery
	deadline := time.After(60 * time.Second)
	for len(out) < n {
		select {
		case d := <-got:
			out = append(out, d)
		case err := <-failed:
			t.Fatalf("%s::%s dropped after %d events: %v", stream, group, len(out), err)
		case <-deadline:
			t.Fatalf("%s::%s delivered %d of %d events within 60s", stream, group, len(out), n)
		}
	}
	return out
}

// TestGroupsCopyPlacesTheGroupAfterTheCheckpoint: a consumer acks part of
// its group on the source and a checkpoint is written; ditto copies the
// category to a destination that interleaves the streams differently (and
// holds events of its own in the category); `ditto groups copy` creates the
// group there with the source's settings, and a consumer on it receives
// every event after the checkpoint, plus exactly the replays the rule
// predicts, and nothing else.
func TestGroupsCopyPlacesTheGroupAfterTheCheckpoint(t *testing.T) {
	e := newEnv(t)
	// Round-robin over five streams on the source.
	const streams, rounds, acked = 5, 20, 37
	names := make([]string, streams)
	for i := range names {
		names[i] = fmt.Sprintf("customer-g%d", i)
	}
	for r := 0; r < rounds; r++ {
		for _, s := range names {
			e.append(t, s, r, 1)
		}
	}
	appendEvents(t, e.dstC, "customer-local", esdb.NoStream{}, testEvents("customer-local", 0, 2)...)

	settings := esdb.SubscriptionSettingsDefault()
	settings.ResolveLinkTos = true
	settings.ConsumerStrategyName = esdb.ConsumerStrategyDispatchToSingle
	settings.CheckpointLowerBound, settings.CheckpointUpperBound = 1, 1 // a checkpoint after every ack
	settings.MaxRetryCount, settings.MessageTimeout, settings.LiveBufferSize = 7, 12345, 300
	settings.ReadBatchSize, settings.HistoryBufferSize, settings.CheckpointAfter = 30, 400, 1500
	if err := e.srcC.CreatePersistentSubscription(context.Background(), "$ce-customer", "app",
		esdb.PersistentStreamSubscriptionOptions{Settings: &settings, StartFrom: esdb.Start{}}); err != nil {
		t.Fatal(err)
	}
	// The consumer acks the first 37 events in order; 10 more stay in
	// flight unacked when it leaves.
	consumed := consume(t, e.srcC, "$ce-customer", "app", acked, testutil.Checkpointed(e.srcC, "$ce-customer", "app", acked-1))

	// ditto copies the category; one writer and whole-stream batches
	// interleave the streams on the destination otherwise than on the source.
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	startDitto(t, e, map[string]string{"DITTO_WRITERS": "1"})
	e.waitIdentical(t, verify.Options{Streams: names})

	// The rule, worked out here from both category streams.
	srcLinks, dstLinks := readAll(t, e.srcC, "$ce-customer"), readAll(t, e.dstC, "$ce-customer")
	for i, ev := range consumed {
		if want := linkKey(srcLinks[i]); ev.key != want {
			t.Fatalf("the source consumer's event %d is %s, want %s", i, ev.key, want)
		}
	}
	after := map[string]bool{}
	for _, ev := range srcLinks[acked:] {
		after[linkKey(ev)] = true
	}
	start := -1
	for i, ev := range dstLinks {
		if after[linkKey(ev)] {
			start = i
			break
		}
	}
	var wantKeys []string
	var replays []string
	for _, ev := range dstLinks[start:] {
		wantKeys = append(wantKeys, linkKey(ev))
		if !after[linkKey(ev)] {
			replays = append(replays, linkKey(ev))
		}
	}
	differ := 0
	for i, ev := range srcLinks {
		if i+2 >= len(dstLinks) || linkKey(dstLinks[i+2]) != linkKey(ev) {
			differ++
		}
	}
	if differ == 0 {
		t.Fatal("the destination interleaves the streams as the source does; the test needs them to differ")
	}
	t.Logf("source checkpoint %d; destination start %d of %d; %d events after the checkpoint, %d replays; %d of %d links elsewhere than on the source (beyond the 2 local events)",
		acked-1, start, len(dstLinks), len(after), len(replays), differ, len(srcLinks))

	env := baseEnv(e.src.ConnectionString(), e.dst.ConnectionString())
	// A dry run creates nothing.
	p := startProcess(t, env, "groups", "copy", "--dry-run")
	if code := p.exitCode(t); code != 0 || !strings.Contains(p.output.String(), "$ce-customer::app: dry run, nothing created: destination start "+fmt.Sprint(start)) {
		t.Fatalf("dry run: exit %d:\n%s", code, p.output)
	}
	if _, err := e.dstC.GetPersistentSubscriptionInfo(context.Background(), "$ce-customer", "app", esdb.GetPersistentSubscriptionOptions{}); err == nil {
		t.Fatal("the dry run created the group")
	}
	p = startProcess(t, env, "groups", "copy", "--json")
	if code := p.exitCode(t); code != 0 {
		t.Fatalf("exit %d:\n%s", code, p.output)
	}
	var results []groups.Result
	if err := json.Unmarshal([]byte(p.output.String()), &results); err != nil {
		t.Fatalf("%v:\n%s", err, p.output)
	}
	// ditto's own group is not copied.
	if len(results) != 1 || results[0].Name != "app" || results[0].Outcome != groups.OutcomeCreated ||
		results[0].Start != uint64(start) || results[0].Replays != len(replays) || results[0].After != len(after) {
		t.Fatalf("results %+v; want app created at %d with %d replays", results, start, len(replays))
	}

	info, err := e.dstC.GetPersistentSubscriptionInfo(context.Background(), "$ce-customer", "app", esdb.GetPersistentSubscriptionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := *info.Settings
	want := settings
	want.StartFrom = esdb.Revision(uint64(start))
	if start == 0 {
		want.StartFrom = esdb.Start{}
	}
	if got != want {
		t.Fatalf("destination settings %+v, want %+v", got, want)
	}

	// The consumer fails over: it receives exactly the predicted events.
	delivered := consume(t, e.dstC, "$ce-customer", "app", len(wantKeys), testutil.Checkpointed(e.dstC, "$ce-customer", "app", uint64(len(dstLinks)-1)))
	seen := map[string]int{}
	for i, d := range delivered {
		seen[d.key]++
		if d.key != wantKeys[i] {
			t.Fatalf("delivery %d is %s, want %s", i, d.key, wantKeys[i])
		}
	}
	for k := range after {
		if seen[k] != 1 {
			t.Fatalf("event %s after the checkpoint delivered %d times", k, seen[k])
		}
	}
	// Nothing else is delivered: the next event is one written now.
	appendEvents(t, e.dstC, "customer-local", esdb.Revision(1), testEvents("customer-local", 2, 1)...)
	if next := consume(t, e.dstC, "$ce-customer", "app", 1, nil); next[0].key != "2@customer-local" {
		t.Fatalf("after the expected events the group delivered %s", next[0].key)
	}

	// An existing group is left alone, or replaced when asked.
	p = startProcess(t, env, "groups", "copy")
	if code := p.exitCode(t); code != 0 || !strings.Contains(p.output.String(), "$ce-customer::app: exists on the destination, left as it is") {
		t.Fatalf("second copy: exit %d:\n%s", code, p.output)
	}
	p = startProcess(t, env, "groups", "copy", "--groups", "$ce-customer:app", "--replace")
	if code := p.exitCode(t); code != 0 || !strings.Contains(p.output.String(), "$ce-customer::app: replaced: destination start "+fmt.Sprint(start)) {
		t.Fatalf("--replace: exit %d:\n%s", code, p.output)
	}
}

// --- bad input of ditto groups (rows of README's catalogue) ---------------

func testGroupsWithoutSubcommand(t *testing.T) {
	p := startProcess(t, nil, "groups", "move")
	if code := p.exitCode(t); code != 2 || !strings.Contains(p.output.String(), "ditto groups: expected the subcommand copy") {
		t.Fatalf("exit %d:\n%s", code, p.output)
	}
}

func testGroupsCopyWithoutDestination(t *testing.T) {
	p := startProcess(t, map[string]string{"DITTO_SOURCE_CONNECTION_STRING": "esdb://127.0.0.1:1?tls=false", "DITTO_SUBSCRIPTIONS": "$ce-customer:ditto"}, "groups", "copy")
	if code := p.exitCode(t); code != 2 || !strings.Contains(p.output.String(), "DITTO_DESTINATION_CONNECTION_STRING is required by ditto groups copy") {
		t.Fatalf("exit %d:\n%s", code, p.output)
	}
}

func testGroupsCopyBadGroups(t *testing.T) {
	p := startProcess(t, map[string]string{"DITTO_SOURCE_CONNECTION_STRING": "esdb://127.0.0.1:1?tls=false", "DITTO_DESTINATION_CONNECTION_STRING": "esdb://127.0.0.1:2?tls=false"},
		"groups", "copy", "--groups", "$ce-customer")
	if code := p.exitCode(t); code != 2 || !strings.Contains(p.output.String(), `--groups="$ce-customer": "$ce-customer" is not stream:group`) {
		t.Fatalf("exit %d:\n%s", code, p.output)
	}
}

func testGroupsCopyMissingGroup(t *testing.T) {
	e := newEnv(t)
	p := startProcess(t, map[string]string{"DITTO_SOURCE_CONNECTION_STRING": e.src.ConnectionString(), "DITTO_DESTINATION_CONNECTION_STRING": e.dst.ConnectionString()},
		"groups", "copy", "--groups", "$ce-customer:nope")
	if code := p.exitCode(t); code != 1 || !strings.Contains(p.output.String(), "$ce-customer::nope: failed: reading the group on the source") {
		t.Fatalf("exit %d:\n%s", code, p.output)
	}
}
