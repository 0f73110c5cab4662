package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/policy"
	"github.com/ditto-replicator/ditto/verify"
)

// link is one ditto deployment, running as a process, from one cluster to
// another.
type link struct {
	p       *process
	metrics string // its /metrics address
	env     map[string]string
}

// linkEnv is the environment of a deployment from src (named from) to dst
// (named to), with provenance and both names, so that the link back is not
// a loop.
func linkEnv(t *testing.T, src, dst, from, to string, extra map[string]string) map[string]string {
	env := baseEnv(src, dst, map[string]string{
		"DITTO_METRICS_ADDRESS":  testutil.FreeAddr(t),
		"DITTO_PROVENANCE":       "true",
		"DITTO_ORIGIN_NAME":      from,
		"DITTO_DESTINATION_NAME": to,
		"DITTO_BATCH_MAX_EVENTS": "5",
	}, extra)
	maps.DeleteFunc(env, func(_, v string) bool { return v == "" })
	return env
}

func startLink(t *testing.T, env map[string]string) *link {
	t.Helper()
	l := &link{p: startProcess(t, env), metrics: env["DITTO_METRICS_ADDRESS"], env: env}
	t.Cleanup(func() {
		if t.Failed() {
			out := l.p.output.String()
			t.Logf("ditto %s→%s, last output:\n%s", env["DITTO_ORIGIN_NAME"], env["DITTO_DESTINATION_NAME"], out[max(0, len(out)-8000):])
		}
	})
	testutil.Eventually(t, 30*time.Second, "ditto listens on "+l.metrics, func() bool {
		select {
		case <-l.p.exited:
			t.Fatalf("ditto exited:\n%s", l.p.output)
		default:
		}
		code, _ := readyStatus(l.metrics)
		return code != 0
	})
	return l
}

// sample reads a per-subscription series of $ce-customer:ditto; labels are
// the others, in order, as name="value" pairs ("" for none).
func (l *link) sample(t *testing.T, name, labels string) float64 {
	t.Helper()
	prefix := name + `{app="ditto",group="ditto",`
	if labels != "" {
		prefix += labels + ","
	}
	v := sample(t, l.metrics, prefix+`stream="$ce-customer"}`)
	return max(v, 0)
}

func (l *link) counts(t *testing.T, policyName string) (processed, origin, conflicts float64) {
	return l.sample(t, "ditto_events_processed_total", ""), l.sample(t, "ditto_events_filtered_total", `reason="origin"`),
		l.sample(t, "ditto_events_conflicts_total", `policy="`+policyName+`"`)
}

// writeAt appends evs to stream on c at number from. It fails t without
// stopping it, so that it can run in a goroutine of its own.
func writeAt(t *testing.T, c *esdb.Client, stream string, from int, evs ...esdb.EventData) {
	t.Helper()
	if _, err := c.AppendToStream(context.Background(), stream, esdb.AppendToStreamOptions{ExpectedRevision: testutil.ExpectedAt(from)}, evs...); err != nil {
		t.Errorf("appending %d events to %s at %d: %v", len(evs), stream, from, err)
	}
}

// waitLast waits until stream on c ends at event number n.
func waitLast(t *testing.T, c *esdb.Client, stream string, n int64) {
	t.Helper()
	testutil.Eventually(t, 60*time.Second, fmt.Sprintf("%s ends at %d", stream, n), func() bool { return lastNumber(c, stream) == n })
}

func eventIDs(evs []esdb.EventData) []uuid.UUID {
	out := make([]uuid.UUID, len(evs))
	for i, ev := range evs {
		out[i] = ev.EventID
	}
	return out
}

func recordedIDs(evs []*esdb.RecordedEvent) []uuid.UUID {
	out := make([]uuid.UUID, len(evs))
	for i, ev := range evs {
		out[i] = ev.EventID
	}
	return out
}

// TestActiveActive runs two clusters, a and b, and two ditto deployments,
// a→b and b→a, while clients write on both sides, once per conflict
// policy:
//   - streams written on one side only, and streams written on one side
//     and then on the other (each side's events reaching the other before
//     it writes), converge: ditto verify finds them identical both ways,
//     under each deployment's policy;
//   - nothing loops: each deployment writes exactly the events native to
//     its source and drops (reason origin) exactly those that came from its
//     destination, and every stream holds exactly the events written to it;
//   - streams written on both sides at once diverge, and end exactly as the
//     policy says: each side keeps its own events, and the other side's
//     events after the divergence are parked on the source (park), appended
//     to the link's conflicts stream on the destination (conflict-stream),
//     or acked and counted (skip), on both links.
func TestActiveActive(t *testing.T) {
	for _, policyName := range []string{"park", "conflict-stream", "skip"} {
		t.Run(policyName, func(t *testing.T) { activeActive(t, policyName) })
	}
}

func activeActive(t *testing.T, policyName string) {
	a := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	b := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	ea := &env{src: a, dst: b, srcC: mustClient(t, a.ConnectionString()), dstC: mustClient(t, b.ConnectionString())}
	eb := &env{src: b, dst: a, srcC: ea.dstC, dstC: ea.srcC}
	ac, bc := ea.srcC, ea.dstC
	ea.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	eb.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)

	// Streams written on both sides before either link runs: the same two
	// events on both (as if copied), then a tail of each side's own.
	const conflicting = 2
	type diverged struct {
		name   string
		prefix []esdb.EventData
		ta, tb []esdb.EventData // each side's own events from number 2 on
	}
	var divs []*diverged
	for i := range conflicting {
		d := &diverged{name: fmt.Sprintf("customer-c%d", i)}
		d.prefix = testEvents(d.name, 0, 2)
		d.ta = policyEvents(d.name, 2, 2, 0)
		d.tb = policyEvents(d.name, 2, 1, 0)
		writeAt(t, ac, d.name, 0, append(append([]esdb.EventData{}, d.prefix...), d.ta...)...)
		writeAt(t, bc, d.name, 0, append(append([]esdb.EventData{}, d.prefix...), d.tb...)...)
		divs = append(divs, d)
	}

	pa := map[string]string{"DITTO_CONFLICT_POLICY": policyName}
	ab := startLink(t, linkEnv(t, a.ConnectionString(), b.ConnectionString(), "a", "b", pa))
	ba := startLink(t, linkEnv(t, b.ConnectionString(), a.ConnectionString(), "b", "a", pa))

	// Clients on both sides: streams of their own, in chunks, while the
	// links run; and streams that change sides (a writes, b writes after
	// it has a's events, then a again), which in a plain copy append at
	// their own numbers after the other side's events.
	const own, perStream, chunk = 6, 12, 4
	var wg sync.WaitGroup
	for side, c := range map[string]*esdb.Client{"a": ac, "b": bc} {
		names := make([]string, own)
		for i := range names {
			names[i] = fmt.Sprintf("customer-%s%d", side, i)
		}
		wg.Go(func() { writeStreams(t, c, names, perStream, chunk) })
	}
	const mixed = 3
	mixedA, mixedB := 0, 0 // events of the mixed streams native to a, to b
	for i := range mixed {
		s := fmt.Sprintf("customer-m%d", i)
		writeAt(t, ac, s, 0, policyEvents(s, 0, 3, 0)...)
		waitLast(t, bc, s, 2)
		writeAt(t, bc, s, 3, policyEvents(s, 3, 2, 0)...)
		waitLast(t, ac, s, 4)
		writeAt(t, ac, s, 5, policyEvents(s, 5, 2, 0)...)
		waitLast(t, bc, s, 6)
		mixedA, mixedB = mixedA+5, mixedB+2
	}
	// The diverged streams go on diverging on both sides.
	for _, d := range divs {
		more := policyEvents(d.name, 4, 1, 0)
		writeAt(t, ac, d.name, 4, more...)
		d.ta = append(d.ta, more...)
		more = policyEvents(d.name, 3, 2, 0)
		writeAt(t, bc, d.name, 3, more...)
		d.tb = append(d.tb, more...)
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// Each link: events native to its source are written (or, for the
	// shared prefixes, found written), those from its destination are
	// dropped, and the other side's tails of the diverged streams follow
	// the policy.
	onlyA := own*perStream + mixedA + conflicting*2
	onlyB := own*perStream + mixedB + conflicting*2
	tailA, tailB := 0, 0
	for _, d := range divs {
		tailA, tailB = tailA+len(d.ta), tailB+len(d.tb)
	}
	for _, l := range []struct {
		name                     string
		l                        *link
		processed, origin, tails int
	}{
		{"a→b", ab, onlyA, own*perStream + mixedB, tailA},
		{"b→a", ba, onlyB, own*perStream + mixedA, tailB},
	} {
		testutil.Eventually(t, 90*time.Second, l.name+" settles every event exactly once", func() bool {
			p, o, c := l.l.counts(t, policyName)
			return p == float64(l.processed) && o == float64(l.origin) && c == float64(l.tails) &&
				sample(t, l.l.metrics, "ditto_events_in_flight ") == 0
		})
	}

	// A diverged stream stays diverged when ditto has forgotten it (a
	// restart here; after 10 minutes otherwise): b's next event fits a's
	// stream at expected revision 4, but follows b's own event 4, not a's,
	// so it goes the way of the others.
	ba.p.kill()
	ba = startLink(t, ba.env)
	d := divs[0]
	more := policyEvents(d.name, 5, 1, 0)
	writeAt(t, bc, d.name, 5, more...)
	d.tb = append(d.tb, more...)
	tailB++
	testutil.Eventually(t, 60*time.Second, "b→a, restarted, settles the diverged stream's next event", func() bool {
		_, _, c := ba.counts(t, policyName)
		return c == 1 && sample(t, ba.metrics, "ditto_events_in_flight ") == 0
	})
	if p, o, _ := ba.counts(t, policyName); p != 0 || o != 0 {
		t.Fatalf("b→a, restarted: %v processed, %v dropped for their origin; want nothing redelivered", p, o)
	}

	// Converged both ways, under each deployment's own policy.
	var converged []string
	for i := range own {
		converged = append(converged, fmt.Sprintf("customer-a%d", i), fmt.Sprintf("customer-b%d", i))
	}
	for i := range mixed {
		converged = append(converged, fmt.Sprintf("customer-m%d", i))
	}
	polAB := policyFor(t, policy.Spec{Provenance: true, OriginName: "a", DestinationName: "b"})
	polBA := policyFor(t, policy.Spec{Provenance: true, OriginName: "b", DestinationName: "a"})
	for _, side := range []struct {
		e   *env
		pol *policy.Policy
	}{{ea, polAB}, {eb, polBA}} {
		rep := side.e.compare(t, verify.Options{Streams: converged, Policy: side.pol})
		want := own*perStream*2 + mixed*7
		if !rep.OK() || rep.SourceEvents != want || rep.DestinationEvents != want {
			var b strings.Builder
			rep.WriteText(&b)
			t.Fatalf("verify %s→%s: want %d events each side, identical:\n%s", side.e.src.Addr(), side.e.dst.Addr(), want, b.String())
		}
	}
	// A mixed stream holds each side's events once, at their numbers, and
	// each copy carries the chain of the side it came from.
	m := readAll(t, ac, "customer-m0")
	if len(m) != 7 {
		t.Fatalf("customer-m0 holds %d events on a", len(m))
	}
	if prov, _ := policy.ParseProvenance(m[3].UserMetadata); len(prov.Origin) != 1 || prov.Origin[0] != "b" || prov.OriginalEventNumber != 3 {
		t.Fatalf("b's event 3 on a: provenance %+v", prov)
	}
	if prov, ok := policy.ParseProvenance(readAll(t, bc, "customer-m0")[5].UserMetadata); !ok || len(prov.Origin) != 1 || prov.Origin[0] != "a" {
		t.Fatalf("a's event 5 on b: provenance %+v", prov)
	}

	// The diverged streams: verify names them, each side keeps exactly its
	// own events, and the policy decided about the rest.
	var names []string
	for _, d := range divs {
		names = append(names, d.name)
	}
	altered, missing, extra := 0, 0, 0
	for _, d := range divs {
		altered += min(len(d.ta), len(d.tb))
		missing += max(0, len(d.ta)-len(d.tb))
		extra += max(0, len(d.tb)-len(d.ta))
	}
	rep := ea.compare(t, verify.Options{Streams: names, Policy: polAB})
	if rep.OK() || rep.Altered != altered || rep.Missing != missing || rep.Extra != extra || rep.OutOfOrder+rep.Corrupted != 0 || len(rep.Results) != conflicting {
		var b strings.Builder
		rep.WriteText(&b)
		t.Fatalf("verify of the diverged streams:\n%s", b.String())
	}
	for _, d := range divs {
		if got := recordedIDs(readAll(t, ac, d.name)); !slices.Equal(got, eventIDs(append(append([]esdb.EventData{}, d.prefix...), d.ta...))) {
			t.Errorf("%s on a holds %v", d.name, got)
		}
		if got := recordedIDs(readAll(t, bc, d.name)); !slices.Equal(got, eventIDs(append(append([]esdb.EventData{}, d.prefix...), d.tb...))) {
			t.Errorf("%s on b holds %v", d.name, got)
		}
	}
	for _, side := range []struct {
		name           string
		src, dst       *esdb.Client
		from, to       string
		tails          func(*diverged) []esdb.EventData
		conflictStream string
	}{
		{"a→b", ac, bc, "a", "b", func(d *diverged) []esdb.EventData { return d.ta }, "ditto-conflicts-a-b"},
		{"b→a", bc, ac, "b", "a", func(d *diverged) []esdb.EventData { return d.tb }, "ditto-conflicts-b-a"},
	} {
		reasons := parked(t, side.src, "$ce-customer", "ditto")
		records := readIfAny(t, side.dst, side.conflictStream)
		switch policyName {
		case "park":
			n := 0
			for _, d := range divs {
				n += len(side.tails(d))
			}
			if len(reasons) != n || len(records) != 0 {
				t.Fatalf("%s: %d parked (want %d), %d records", side.name, len(reasons), n, len(records))
			}
			for _, r := range reasons {
				if !strings.Contains(r, "diverged at 2") && !strings.Contains(r, "diverged at 4") {
					t.Errorf("%s: park reason %q", side.name, r)
				}
			}
		case "conflict-stream":
			if len(reasons) != 0 {
				t.Fatalf("%s: parked %q", side.name, reasons)
			}
			// Each stream's tail in order (streams may interleave).
			byStream := map[string][]uuid.UUID{}
			for _, rec := range records {
				var md struct {
					Reason string `json:"$conflictReason"`
					Stream string `json:"$conflictStreamId"`
				}
				if err := json.Unmarshal(rec.UserMetadata, &md); err != nil || !strings.Contains(md.Reason, "destination stream "+md.Stream+" diverged at") {
					t.Fatalf("%s: record metadata %s", side.name, rec.UserMetadata)
				}
				byStream[md.Stream] = append(byStream[md.Stream], rec.EventID)
			}
			for _, d := range divs {
				if !slices.Equal(byStream[d.name], eventIDs(side.tails(d))) {
					t.Errorf("%s: %s's records %v, want its tail %v", side.name, d.name, byStream[d.name], eventIDs(side.tails(d)))
				}
			}
		case "skip":
			if len(reasons) != 0 || len(records) != 0 {
				t.Fatalf("%s: %d parked, %d records", side.name, len(reasons), len(records))
			}
		}
	}
}
