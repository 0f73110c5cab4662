package verify_test

import (
	"strings"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/policy"
	"github.com/ditto-replicator/ditto/verify"
)

// These tests write, directly with the client, what ditto writes under a policy, and check that
// verify under the same policy finds it identical, and finds each divergence written on purpose.

func compile(t *testing.T, spec policy.Spec) *policy.Policy {
	t.Helper()
	p, problems := policy.Compile(spec)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	return p
}

// recorded reads stream back from c, resolving links.
func recorded(t *testing.T, c *esdb.Client, stream string) []esdb.ResolvedEvent {
	t.Helper()
	rs, err := c.ReadStream(ctxFor(t), stream, esdb.ReadStreamOptions{From: esdb.Start{}, ResolveLinkTos: true}, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []esdb.ResolvedEvent
	for {
		ev, err := rs.Recv()
		if err != nil {
			return out
		}
		out = append(out, *ev)
	}
}

// copied is what ditto writes of the source event rec under p: the same event with provenance.
func copied(t *testing.T, p *policy.Policy, rec *esdb.RecordedEvent, sub string, subNumber uint64) esdb.EventData {
	t.Helper()
	md, err := p.Annotate(rec.EventType, rec.Data, rec.UserMetadata, policy.Coordinates{
		Stream: rec.StreamID, Number: rec.EventNumber, Created: rec.CreatedDate, SubStream: sub, SubNumber: subNumber})
	if err != nil {
		t.Fatal(err)
	}
	ct := esdb.ContentTypeBinary
	if rec.ContentType == "application/json" {
		ct = esdb.ContentTypeJson
	}
	return esdb.EventData{EventID: rec.EventID, EventType: rec.EventType, ContentType: ct, Data: rec.Data, Metadata: md}
}

// written is what ditto writes to dest under p of the events of stream on c: those p keeps,
// with provenance; sub names the subscription stream when stream is one (consolidation).
func written(t *testing.T, p *policy.Policy, c *esdb.Client, stream, dest, sub string) []esdb.EventData {
	t.Helper()
	var out []esdb.EventData
	for _, re := range recorded(t, c, stream) {
		if p.Writes(dest, re.Event) {
			var subNumber uint64
			if sub != "" {
				subNumber = re.OriginalEvent().EventNumber
			}
			out = append(out, copied(t, p, re.Event, sub, subNumber))
		}
	}
	return out
}

func typedEvents(types ...string) []esdb.EventData {
	var evs []esdb.EventData
	for i, typ := range types {
		evs = append(evs, jsonEvent(typ, i))
	}
	return evs
}

func TestFilteredStreamMatchedByProvenance(t *testing.T) {
	src, dst := servers(t)
	p := compile(t, policy.Spec{ExcludeEventTypes: "Debug"})
	appendEvents(t, src, "order-1", typedEvents("Placed", "Debug", "Paid", "Debug", "Shipped")...)
	appendEvents(t, dst, "order-1", written(t, p, src, "order-1", "order-1", "")...)
	opts := verify.Options{Streams: []string{"order-1"}, Policy: p}
	checkCounts(t, compare(t, src, dst, opts), counts{streams: 1, src: 3, dst: 3})

	// Without the policy the same copy is far from identical.
	if compare(t, src, dst, verify.Options{Streams: []string{"order-1"}}).OK() {
		t.Fatal("a filtered copy is identical without the policy")
	}

	// A kept event lost, an event written twice, one without provenance.
	src2, dst2 := servers(t)
	appendEvents(t, src2, "order-1", typedEvents("Placed", "Debug", "Paid", "Debug", "Shipped")...)
	k := written(t, p, src2, "order-1", "order-1", "")
	appendEvents(t, dst2, "order-1", k[0], k[2], k[2], jsonEvent("Foreign", 9))
	rep := compare(t, src2, dst2, opts)
	checkCounts(t, rep, counts{streams: 1, src: 3, dst: 4, missing: 1, extra: 2})
	if d := findDivergence(t, rep, "order-1", 2); d.Kind != verify.KindMissing {
		t.Fatalf("source event 2 (Paid): %+v", d)
	}
	var foreign bool
	for _, d := range rep.Divergences {
		foreign = foreign || (d.Kind == verify.KindExtra && strings.Contains(d.Detail, "carries no provenance"))
	}
	if !foreign {
		t.Fatalf("the event without provenance is not reported: %+v", rep.Divergences)
	}
}

func TestMappedStreams(t *testing.T) {
	src, dst := servers(t)
	p := compile(t, policy.Spec{StreamTemplate: "dr-{stream}", ExcludeStreams: "customer-2"})
	c1 := jsonEvents(3)
	appendEvents(t, src, "customer-1", c1...)
	appendEvents(t, src, "customer-2", jsonEvents(2)...)
	appendEvents(t, dst, "dr-customer-1", c1...)
	waitForLinks(t, src, "$ce-customer", 5)
	rep := compare(t, src, dst, verify.Options{Categories: []string{"customer"}, Policy: p})
	checkCounts(t, rep, counts{streams: 1, src: 3, dst: 3})
	if rep.Results[0].Destination != "dr-customer-1" {
		t.Fatalf("result %+v", rep.Results[0])
	}
	appendEvents(t, src, "customer-1", jsonEvents(1)...)
	checkCounts(t, compare(t, src, dst, verify.Options{Streams: []string{"customer-1"}, Policy: p}), counts{streams: 1, src: 4, dst: 3, missing: 1})
}

func TestConsolidatedStreamInSubscriptionOrder(t *testing.T) {
	src, dst := servers(t)
	p := compile(t, policy.Spec{StreamTemplate: "all-customers"})
	for i := range 3 {
		for _, s := range []string{"customer-a", "customer-b"} {
			appendEvents(t, src, s, jsonEvent("T", i))
		}
	}
	appendEvents(t, src, "customer-a", jsonEvent("$system", 9)) // dropped: a $ type
	waitForLinks(t, src, "$ce-customer", 7)
	all := written(t, p, src, "$ce-customer", "all-customers", "$ce-customer")
	if len(all) != 6 {
		t.Fatalf("%d events kept, want 6", len(all))
	}
	opts := verify.Options{Categories: []string{"customer"}, Policy: p}
	appendEvents(t, dst, "all-customers", all...)
	rep := compare(t, src, dst, opts)
	checkCounts(t, rep, counts{streams: 1, src: 6, dst: 6})
	if r := rep.Results[0]; r.Stream != "$ce-customer" || r.Destination != "all-customers" {
		t.Fatalf("result %+v", r)
	}
	if _, err := verify.Compare(ctxFor(t), src, dst, verify.Options{Streams: []string{"customer-a"}, Policy: p}); err == nil {
		t.Fatal("--streams accepted for a consolidated copy")
	}

	// Two events swapped on the destination.
	dst2 := startServer(t)
	swapped := append([]esdb.EventData{}, all...)
	swapped[1], swapped[2] = swapped[2], swapped[1]
	appendEvents(t, dst2, "all-customers", swapped...)
	rep = compare(t, src, dst2, opts)
	if rep.OK() || rep.OutOfOrder == 0 {
		var b strings.Builder
		rep.WriteText(&b)
		t.Fatalf("swapped events not reported out of order:\n%s", b.String())
	}
}

// Where ditto wrote a content signature, an event altered on the destination is reported as
// corrupted; the provenance keys themselves are no difference.
func TestSignatureMismatchIsCorrupted(t *testing.T) {
	src, dst := servers(t)
	p := compile(t, policy.Spec{Provenance: true})
	appendEvents(t, src, "customer-1", jsonEvents(3)...)
	var evs []esdb.EventData
	for _, re := range recorded(t, src, "customer-1") {
		evs = append(evs, copied(t, p, re.Event, "", 0))
	}
	good := append([]esdb.EventData{}, evs...)
	appendEvents(t, dst, "customer-1", good...)
	opts := verify.Options{Streams: []string{"customer-1"}, Policy: p}
	checkCounts(t, compare(t, src, dst, opts), counts{streams: 1, src: 3, dst: 3})

	dst2 := startServer(t)
	evs[1].Data = []byte(`{"n":1000}`) // same signature, other data
	appendEvents(t, dst2, "customer-1", evs...)
	rep := compare(t, src, dst2, opts)
	if rep.Corrupted != 1 || rep.OK() || rep.Altered != 0 {
		t.Fatalf("report %+v", rep)
	}
	if d := findDivergence(t, rep, "customer-1", 1); d.Kind != verify.KindCorrupted || !strings.Contains(d.Detail, "$signature") {
		t.Fatalf("divergence %+v", d)
	}
	var text strings.Builder
	rep.WriteText(&text)
	if !strings.Contains(text.String(), "corrupted 1") {
		t.Fatalf("text report:\n%s", text.String())
	}
	// Verify needs no policy to check signatures.
	if rep := compare(t, src, dst2, verify.Options{Streams: []string{"customer-1"}}); rep.Corrupted != 1 {
		t.Fatalf("without the policy: %+v", rep)
	}
}
