package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/recovery"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/policy"
	"github.com/ditto-replicator/ditto/verify"
)

// TestFailoverDrill is the drill of docs/failover.md, once per conflict
// policy that keeps what it cannot write (park, conflict-stream): a→b runs;
// a takes writes b never gets (a's tail), which `ditto status` reports
// before a is killed; clients move to b and write, also to the streams of
// a's tail; a comes back from its data directory and b→a runs: everything
// b took reaches a, except the events of the streams where a's tail sits,
// which `ditto verify` reports stream by stream and the policy keeps (a's
// tail is never overwritten); then clients move back to a and a→b runs
// again: a's tail meets b's events and is kept by the policy too, and every
// other stream is identical on both sides.
func TestFailoverDrill(t *testing.T) {
	for _, p := range []string{"park", "conflict-stream"} {
		t.Run(p, func(t *testing.T) { failoverDrill(t, p) })
	}
}

func failoverDrill(t *testing.T, policyName string) {
	a := startEmulator(t)
	b := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	bc := mustClient(t, b.ConnectionString())
	ac := mustClient(t, a.connectionString())
	ea := &env{dst: b, srcC: ac, dstC: bc}
	ea.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	conflicts := map[string]string{"DITTO_CONFLICT_POLICY": policyName}
	abEnv := linkEnv(t, a.connectionString(), b.ConnectionString(), "a", "b", conflicts)
	baEnv := linkEnv(t, b.ConnectionString(), a.connectionString(), "b", "a", map[string]string{
		"DITTO_CONFLICT_POLICY": policyName, "DITTO_CREATE_SUBSCRIPTIONS": "true"})

	steady := []string{"customer-s0", "customer-s1", "customer-s2", "customer-s3"}
	tails := []string{"customer-t0", "customer-t1"}
	all := append(append([]string{}, steady...), tails...)
	polAB := policyFor(t, policy.Spec{Provenance: true, OriginName: "a", DestinationName: "b"})
	polBA := policyFor(t, policy.Spec{Provenance: true, OriginName: "b", DestinationName: "a"})

	// 1. a→b runs while clients write on a.
	ab := startLink(t, abEnv)
	writeStreams(t, ac, all, 5, 2)
	mustIdentical(t, "a → b", ea, all, polAB, 5*len(all))

	// 2. a→b falls behind (here: it stops) while a takes more writes: a's
	// tail, two events in each of two streams and a new stream. The
	// recovery point says what a failover now loses.
	ab.p.kill()
	var tailIDs []uuid.UUID
	for _, s := range tails {
		evs := policyEvents(s, 5, 2, 0)
		writeAt(t, ac, s, 5, evs...)
		tailIDs = append(tailIDs, eventIDs(evs)...)
	}
	writeAt(t, ac, "customer-u", 0, policyEvents("customer-u", 0, 3, 0)...)
	st := startProcess(t, abEnv, "status", "--json")
	if code := st.exitCode(t); code != 0 {
		t.Fatalf("ditto status: exit %d:\n%s", code, st.output)
	}
	var points []recovery.Point
	if err := json.Unmarshal([]byte(st.output.String()), &points); err != nil || len(points) != 1 || points[0].Events != 7 || !points[0].Exact {
		t.Fatalf("ditto status before the failover: %v\n%s", err, st.output)
	}

	// 3. a fails (kill -9); clients move to b and write: to streams b has
	// whole, to the streams of a's tail (at the numbers of a's tail) and
	// to a new stream.
	ac.Close()
	a.proc.kill()
	for _, s := range steady {
		writeAt(t, bc, s, 5, policyEvents(s, 5, 2, 0)...)
	}
	bTail := map[string][]uuid.UUID{}
	for _, s := range tails {
		evs := policyEvents(s, 5, 3, 0)
		writeAt(t, bc, s, 5, evs...)
		bTail[s] = eventIDs(evs)
	}
	writeAt(t, bc, "customer-bnew", 0, policyEvents("customer-bnew", 0, 4, 0)...)

	// 4. a comes back, from its data directory, and b→a runs.
	a.start(t)
	ac = mustClient(t, a.connectionString())
	eb := &env{src: b, srcC: bc, dstC: ac}
	ba := startLink(t, baEnv)
	// b's own events are written, a's come back dropped, and b's events in
	// the streams of a's tail are kept by the policy.
	testutil.Eventually(t, 90*time.Second, "b→a settles every event once", func() bool {
		p, o, c := ba.counts(t, policyName)
		return p == float64(len(steady)*2+4) && o == float64(len(all)*5) && c == float64(len(tails)*3) &&
			sample(t, ba.metrics, "ditto_events_in_flight ") == 0
	})
	// ditto verify, stream by stream: the streams of a's tail diverged
	// (b's events 5..7 against a's 5..6), everything else caught up.
	rep := eb.compare(t, verify.Options{Streams: append(append([]string{"customer-bnew"}, steady...), tails...), Policy: polBA})
	for _, r := range rep.Results {
		tail := strings.HasPrefix(r.Stream, "customer-t")
		if tail && (r.OK() || r.Altered != 2 || r.Missing != 1 || r.Extra != 0) || !tail && (!r.OK() || r.SourceEvents != r.DestinationEvents) {
			var b strings.Builder
			rep.WriteText(&b)
			t.Fatalf("verify b → a after the failback, stream %s:\n%s", r.Stream, b.String())
		}
	}
	if len(rep.Results) != 1+len(steady)+len(tails) {
		t.Fatalf("verify compared %d streams", len(rep.Results))
	}
	// a's tail is where it was: never overwritten.
	for i, s := range tails {
		if got := recordedIDs(readAll(t, ac, s)); len(got) != 7 || !slices.Equal(got[5:], tailIDs[2*i:2*i+2]) {
			t.Fatalf("%s on a: %v, want a's tail %v at 5..6", s, got, tailIDs[2*i:2*i+2])
		}
	}
	keptByPolicy(t, policyName, "b→a", bc, ac, "ditto-conflicts-b-a", bTail)

	// 5. Switch back: clients stop on b, b→a is stopped once it is idle,
	// clients move to a and write, a→b runs again. Events that came from b
	// are not sent back; a's tail, never on b, meets b's events there and
	// is kept by the policy, with a's new event in such a stream.
	stopGracefully(t, ba.p)
	writeAt(t, ac, "customer-s0", 7, policyEvents("customer-s0", 7, 1, 0)...)
	late := policyEvents("customer-t0", 7, 1, 0)
	writeAt(t, ac, "customer-t0", 7, late...)
	writeAt(t, ac, "customer-anew", 0, policyEvents("customer-anew", 0, 2, 0)...)
	ab = startLink(t, abEnv)
	ea = &env{dst: b, srcC: ac, dstC: bc}
	converged := append([]string{"customer-u", "customer-bnew", "customer-anew"}, steady...)
	mustIdentical(t, "a → b after the switch back", ea, converged, polAB, 3+4+2+len(steady)*7+1)
	aKept := map[string][]uuid.UUID{tails[0]: append(append([]uuid.UUID{}, tailIDs[:2]...), late[0].EventID), tails[1]: tailIDs[2:]}
	testutil.Eventually(t, 60*time.Second, "a→b keeps a's tail by the policy", func() bool {
		_, _, c := ab.counts(t, policyName)
		return c == 5
	})
	for _, s := range tails {
		if got := recordedIDs(readAll(t, bc, s)); len(got) != 8 || !slices.Equal(got[5:], bTail[s]) {
			t.Fatalf("%s on b: %v, want b's events %v at 5..7", s, got, bTail[s])
		}
	}
	keptByPolicy(t, policyName, "a→b", ac, bc, "ditto-conflicts-a-b", aKept)
}

// keptByPolicy checks that the events of want (by stream, in order), which
// the link from src to dst found diverged, are parked on src or recorded in
// the conflicts stream on dst, as the policy says, and nothing else is.
func keptByPolicy(t *testing.T, policyName, link string, src, dst *esdb.Client, conflictStream string, want map[string][]uuid.UUID) {
	t.Helper()
	got := map[string][]uuid.UUID{}
	n := 0
	switch policyName {
	case "park":
		for _, ev := range readIfAny(t, src, "$persistentsubscription-$ce-customer::ditto-parked") {
			// A parked event is a link to the event: n@stream.
			var num uint64
			var stream string
			if _, err := fmt.Sscanf(strings.Replace(string(ev.Data), "@", " ", 1), "%d %s", &num, &stream); err != nil {
				t.Fatalf("%s: parked %q", link, ev.Data)
			}
			for _, rec := range readAll(t, src, stream) {
				if rec.EventNumber == num {
					got[stream] = append(got[stream], rec.EventID)
				}
			}
			n++
		}
		if records := readIfAny(t, dst, conflictStream); len(records) != 0 {
			t.Fatalf("%s: %d records in %s with policy park", link, len(records), conflictStream)
		}
	case "conflict-stream":
		for _, rec := range readIfAny(t, dst, conflictStream) {
			var md struct {
				Stream string `json:"$conflictStreamId"`
			}
			json.Unmarshal(rec.UserMetadata, &md)
			got[md.Stream] = append(got[md.Stream], rec.EventID)
			n++
		}
		if reasons := parked(t, src, "$ce-customer", "ditto"); len(reasons) != 0 {
			t.Fatalf("%s: parked %q with policy conflict-stream", link, reasons)
		}
	}
	total := 0
	for s, ids := range want {
		total += len(ids)
		if !slices.Equal(got[s], ids) {
			t.Errorf("%s: %s kept %v, want %v", link, s, got[s], ids)
		}
	}
	if n != total {
		t.Errorf("%s: %d events kept by the policy, want %d", link, n, total)
	}
}
