package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/policy"
	"github.com/ditto-replicator/ditto/verify"
)

// writeStreams appends perStream events to each of streams on c, chunk by
// chunk across the streams, as clients do while ditto runs.
func writeStreams(t *testing.T, c *esdb.Client, streams []string, perStream, chunk int) {
	for from := 0; from < perStream; from += chunk {
		for _, s := range streams {
			writeAt(t, c, s, from, policyEvents(s, from, min(chunk, perStream-from), 0)...)
		}
	}
}

// mustIdentical fails unless e's destination matches its source under pol
// for streams, with want events on each side.
func mustIdentical(t *testing.T, hop string, e *env, streams []string, pol *policy.Policy, want int) {
	t.Helper()
	var rep *verify.Report
	testutil.Eventually(t, 90*time.Second, "verify "+hop+": identical", func() bool {
		rep = e.compare(t, verify.Options{Streams: streams, Policy: pol})
		return rep.OK() && rep.DestinationEvents == want
	})
	if rep.SourceEvents != want || rep.DestinationEvents != want || rep.Skipped != 0 {
		var b strings.Builder
		rep.WriteText(&b)
		t.Fatalf("verify %s: want %d events each side:\n%s", hop, want, b.String())
	}
}

// TestFanIn: two source clusters, eu and us, whose stream names collide,
// each copied by a deployment of its own into one destination, kept apart by
// DITTO_STREAM_TEMPLATE (eu-{stream}, us-{stream}). Clients write on both
// sources while the deployments run; ditto verify on each hop finds every
// mapped stream identical to its source, number for number, and each copy
// carries its source's name in $origin.
func TestFanIn(t *testing.T) {
	eu := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	us := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	dst := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	dstC := mustClient(t, dst.ConnectionString())
	hops := map[string]*env{
		"eu": {src: eu, dst: dst, srcC: mustClient(t, eu.ConnectionString()), dstC: dstC},
		"us": {src: us, dst: dst, srcC: mustClient(t, us.ConnectionString()), dstC: dstC},
	}
	const streams, perStream, chunk = 8, 15, 4
	names := make([]string, streams)
	for i := range names {
		names[i] = fmt.Sprintf("customer-%d", i) // on both sources
	}
	for name, e := range hops {
		e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
		startLink(t, linkEnv(t, e.src.ConnectionString(), dst.ConnectionString(), name, "", map[string]string{
			"DITTO_STREAM_TEMPLATE": name + "-{stream}"}))
	}
	var wg sync.WaitGroup
	for _, e := range hops {
		wg.Go(func() { writeStreams(t, e.srcC, names, perStream, chunk) })
	}
	wg.Wait()
	for name, e := range hops {
		pol := policyFor(t, policy.Spec{StreamTemplate: name + "-{stream}", Provenance: true, OriginName: name})
		mustIdentical(t, name+" → destination", e, names, pol, streams*perStream)
		got := readAll(t, dstC, name+"-customer-3")
		if prov, _ := policy.ParseProvenance(got[7].UserMetadata); prov.OriginalStreamID != "customer-3" || prov.OriginalEventNumber != 7 ||
			len(prov.Origin) != 1 || prov.Origin[0] != name {
			t.Fatalf("%s-customer-3 #7: provenance %+v", name, prov)
		}
	}
	if lastNumber(dstC, "customer-0") >= 0 {
		t.Fatal("an unmapped name was written on the destination")
	}
}

// TestChain: a→b→c, each hop a deployment of its own, while clients write
// on a and the b→c deployment is killed and restarted once. b→c copies the
// events that came from a, so their $origin chain grows to [a, b]; ditto
// verify finds every hop identical (a→b, b→c, and a with c), each event
// once and in order.
func TestChain(t *testing.T) {
	a := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	b := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	c := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	ac, bc, cc := mustClient(t, a.ConnectionString()), mustClient(t, b.ConnectionString()), mustClient(t, c.ConnectionString())
	ab := &env{src: a, dst: b, srcC: ac, dstC: bc}
	bcHop := &env{src: b, dst: c, srcC: bc, dstC: cc}
	acHop := &env{src: a, dst: c, srcC: ac, dstC: cc}
	ab.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	bcHop.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	startLink(t, linkEnv(t, a.ConnectionString(), b.ConnectionString(), "a", "", nil))
	second := startLink(t, linkEnv(t, b.ConnectionString(), c.ConnectionString(), "b", "", map[string]string{"DITTO_BUFFER_SIZE": "20"}))

	const streams, perStream, chunk = 10, 20, 5
	names := make([]string, streams)
	for i := range names {
		names[i] = fmt.Sprintf("customer-%d", i)
	}
	var wg sync.WaitGroup
	wg.Go(func() { writeStreams(t, ac, names, perStream, chunk) })
	testutil.Eventually(t, 60*time.Second, "c holds 50 events", func() bool { return lastNumber(cc, "$ce-customer") >= 49 })
	second.p.kill()
	startLink(t, second.env)
	wg.Wait()

	total := streams * perStream
	mustIdentical(t, "a → b", ab, names, policyFor(t, policy.Spec{Provenance: true, OriginName: "a"}), total)
	mustIdentical(t, "b → c", bcHop, names, policyFor(t, policy.Spec{Provenance: true, OriginName: "b"}), total)
	mustIdentical(t, "a → c", acHop, names, policyFor(t, policy.Spec{Provenance: true}), total)
	for _, ev := range readAll(t, cc, names[4]) {
		prov, _ := policy.ParseProvenance(ev.UserMetadata)
		if strings.Join(prov.Origin, ",") != "a,b" || prov.OriginalStreamID != names[4] || prov.OriginalEventNumber != ev.EventNumber {
			t.Fatalf("%s #%d on c: provenance %+v", names[4], ev.EventNumber, prov)
		}
	}
}
