package policy

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ditto-replicator/ditto/internal/metrics"
)

func mustCompile(t testing.TB, spec Spec) *Policy {
	t.Helper()
	p, problems := Compile(spec)
	if len(problems) > 0 {
		t.Fatalf("Compile(%+v): %q", spec, problems)
	}
	return p
}

func TestModes(t *testing.T) {
	for _, tc := range []struct {
		spec       Spec
		mode       Mode
		provenance bool
		trivial    bool
	}{
		{Spec{}, Plain, false, true},
		{Spec{StreamTemplate: "{stream}"}, Plain, false, true},
		{Spec{IncludeStreams: "customer-"}, Plain, false, false},
		{Spec{Provenance: true}, Plain, true, false},
		{Spec{StreamTemplate: "dr-{stream}"}, Mapped, false, false},
		{Spec{StreamTemplate: "{category}-replica-{id}"}, Mapped, false, false},
		{Spec{StreamTemplate: "{id}"}, Mapped, false, false},
		{Spec{ExcludeEventTypes: "Debug"}, Filtered, true, false},
		{Spec{IncludeMetadata: "tenant=a"}, Filtered, true, false},
		{Spec{IncludeEventTypes: "A", StreamTemplate: "dr-{stream}"}, Filtered, true, false},
		{Spec{StreamTemplate: "all-customers"}, Consolidated, true, false},
		{Spec{StreamTemplate: "{category}-all"}, Consolidated, true, false},
		{Spec{StreamTemplate: "{category}-all", ExcludeEventTypes: "X"}, Consolidated, true, false},
	} {
		p := mustCompile(t, tc.spec)
		if p.Mode() != tc.mode || p.Provenance() != tc.provenance || p.Trivial() != tc.trivial {
			t.Errorf("%+v: mode %v, provenance %v, trivial %v; want %v, %v, %v", tc.spec, p.Mode(), p.Provenance(), p.Trivial(), tc.mode, tc.provenance, tc.trivial)
		}
		if p.Sequenced() != (tc.mode >= Filtered) {
			t.Errorf("%+v: sequenced %v", tc.spec, p.Sequenced())
		}
	}
}

func TestBadSpecsNameTheVariable(t *testing.T) {
	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{IncludeStreams: "/customer-(/"}, "DITTO_INCLUDE_STREAMS: /customer-(/ is not a valid regular expression"},
		{Spec{ExcludeStreams: "ok,/[z-a]/"}, "DITTO_EXCLUDE_STREAMS: /[z-a]/ is not a valid regular expression"},
		{Spec{IncludeEventTypes: "/*/"}, "DITTO_INCLUDE_EVENT_TYPES: /*/ is not a valid regular expression"},
		{Spec{ExcludeEventTypes: `/\p{Nope}/`}, "DITTO_EXCLUDE_EVENT_TYPES"},
		{Spec{IncludeMetadata: "tenant"}, `DITTO_INCLUDE_METADATA: "tenant" is not key=value`},
		{Spec{ExcludeMetadata: "=x"}, `DITTO_EXCLUDE_METADATA: "=x" is not key=value`},
		{Spec{StreamTemplate: "dr-{name}"}, `DITTO_STREAM_TEMPLATE="dr-{name}": unknown part {name}`},
		{Spec{StreamTemplate: "dr-{stream"}, "'{' without '}'"},
		{Spec{StreamTemplate: "dr-}"}, "'}' without '{'"},
		{Spec{StreamTemplate: " "}, "the template is empty"},
		{Spec{StreamTemplate: "$ce-{stream}"}, "must not start with '$'"},
		{Spec{StreamTemplate: "all", Subscriptions: []string{"$ce-a", "$ce-b"}}, "consolidates the events of 2 subscriptions"},
		{Spec{StreamTemplate: "{category}-all", Subscriptions: []string{"$ce-a", "$et-b"}}, "consolidates the events of 2 subscriptions"},
		{Spec{OriginName: "eu"}, `DITTO_ORIGIN_NAME="eu" is written into provenance metadata`},
		{Spec{OriginName: "e\nu", Provenance: true}, "DITTO_ORIGIN_NAME"},
		{Spec{DestinationName: "us", Provenance: true}, `DITTO_DESTINATION_NAME="us" needs DITTO_ORIGIN_NAME`},
		{Spec{DestinationName: "eu", OriginName: "eu", Provenance: true}, `DITTO_DESTINATION_NAME="eu" is DITTO_ORIGIN_NAME too`},
		{Spec{DestinationName: "us", OriginName: "eu"}, `DITTO_DESTINATION_NAME="us": loop prevention reads the $origin chain of provenance metadata`},
		{Spec{DestinationName: "u\ts", OriginName: "eu", Provenance: true}, `DITTO_DESTINATION_NAME="u\ts" must not contain control characters`},
	} {
		_, problems := Compile(tc.spec)
		if len(problems) == 0 || !strings.Contains(strings.Join(problems, "\n"), tc.want) {
			t.Errorf("%+v: problems %q, want one containing %q", tc.spec, problems, tc.want)
		}
	}
	// Category streams with {category} may share a consolidating template:
	// each category's events have a destination stream of their own.
	mustCompile(t, Spec{StreamTemplate: "{category}-all", Subscriptions: []string{"$ce-a", "$ce-b"}})
	mustCompile(t, Spec{StreamTemplate: "all", Subscriptions: []string{"$et-x"}})
	// Every problem is reported, not only the first.
	_, problems := Compile(Spec{IncludeStreams: "/(/", IncludeEventTypes: "/(/"})
	if len(problems) != 2 {
		t.Errorf("two bad patterns gave %q", problems)
	}
}

func TestFilters(t *testing.T) {
	p := mustCompile(t, Spec{
		IncludeStreams: `customer-,/^order-\d+$/`, ExcludeStreams: "customer-test",
		IncludeEventTypes: "Order,/^Customer(Created|Renamed)$/", ExcludeEventTypes: "OrderDebug",
		ExcludeMetadata: "tenant=internal,debug=true",
	})
	for _, tc := range []struct {
		stream, typ, md string
		keep            bool
		reason          Reason
	}{
		{"customer-1", "CustomerCreated", `{}`, true, 0},
		{"order-12", "OrderPlaced", ``, true, 0},
		{"order-12x", "OrderPlaced", ``, false, ByStream},
		{"invoice-1", "OrderPlaced", ``, false, ByStream},
		{"customer-test-1", "CustomerCreated", ``, false, ByStream},
		{"customer-1", "CustomerDeleted", ``, false, ByEventType},
		{"customer-1", "OrderDebugged", ``, false, ByEventType},
		{"customer-1", "$metadata", ``, false, BySystemEventType},
		{"customer-1", "Order", `{"tenant":"internal"}`, false, ByMetadata},
		{"customer-1", "Order", `{"tenant":"external"}`, true, 0},
		{"customer-1", "Order", `{"debug":true}`, false, ByMetadata},
		{"customer-1", "Order", `{"debug":"true"}`, false, ByMetadata},
		{"customer-1", "Order", `{"nested":{"tenant":"internal"}}`, true, 0},
		{"customer-1", "Order", `not json`, true, 0}, // not an object: no exclude matches
	} {
		reason, keep := p.Keep(tc.stream, tc.typ, []byte(tc.md))
		if keep != tc.keep || (!keep && reason != tc.reason) {
			t.Errorf("Keep(%s, %s, %s) = %v, %v; want %v, %v", tc.stream, tc.typ, tc.md, reason, keep, tc.reason, tc.keep)
		}
	}

	inc := mustCompile(t, Spec{IncludeMetadata: `tenant=a,n=42,flag=false,none=null,comma=x\,y`})
	for md, keep := range map[string]bool{
		`{"tenant":"a"}`: true, `{"tenant":"b"}`: false, `{"n":42}`: true, `{"n":42.0}`: false, `{"n":"42"}`: true,
		`{"flag":false}`: true, `{"none":null}`: true, `{"comma":"x,y"}`: true, ``: false, `[1]`: false, `{"x":1}`: false,
	} {
		if _, got := inc.Keep("s-1", "T", []byte(md)); got != keep {
			t.Errorf("include metadata: Keep(%s) = %v, want %v", md, got, keep)
		}
	}

	// System event types are kept in the modes that copy streams whole,
	// and on request in the others.
	if _, keep := mustCompile(t, Spec{IncludeStreams: "c"}).Keep("c-1", "$stream-truncated", nil); !keep {
		t.Error("plain copy dropped a $ type")
	}
	if _, keep := mustCompile(t, Spec{StreamTemplate: "all"}).Keep("c-1", "$x", nil); keep {
		t.Error("consolidation kept a $ type")
	}
	if _, keep := mustCompile(t, Spec{StreamTemplate: "all", IncludeSystemEventTypes: true}).Keep("c-1", "$x", nil); !keep {
		t.Error("DITTO_INCLUDE_SYSTEM_EVENT_TYPES did not keep a $ type")
	}
}

func TestItems(t *testing.T) {
	got := items(` a, /x\d+,y/ ,,b\,c, `)
	want := []string{"a", `/x\d+`, "y/", "b,c"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("items = %q, want %q", got, want)
	}
	// An escaped comma inside a regular expression.
	p := mustCompile(t, Spec{IncludeStreams: `/^a\,b$/`})
	if !p.KeepsStream("a,b") || p.KeepsStream("a") {
		t.Fatal("escaped comma in a regular expression")
	}
}

func TestTemplates(t *testing.T) {
	for _, tc := range []struct{ tmpl, stream, want string }{
		{"{stream}", "customer-1", "customer-1"},
		{"dr-{stream}", "customer-1", "dr-customer-1"},
		{"{category}-replica-{id}", "customer-1-x", "customer-replica-1-x"},
		{"{category}-replica-{id}", "customer", "customer-replica-"},
		{"{id}", "customer", ""},
		{"all-customers", "customer-1", "all-customers"},
		{"{category}-all", "order-9", "order-all"},
	} {
		p := mustCompile(t, Spec{StreamTemplate: tc.tmpl})
		if got := p.Destination(tc.stream); got != tc.want {
			t.Errorf("%s(%s) = %q, want %q", tc.tmpl, tc.stream, got, tc.want)
		}
	}
	one := mustCompile(t, Spec{StreamTemplate: "all", Subscriptions: []string{"$et-Order"}})
	cats := mustCompile(t, Spec{StreamTemplate: "{category}-all", Subscriptions: []string{"$ce-a", "$ce-b"}})
	filtered := mustCompile(t, Spec{ExcludeEventTypes: "x"})
	if one.SeqStream("a-1") != "$et-Order" || cats.SeqStream("b-1") != "$ce-b" || filtered.SeqStream("a-1") != "a-1" {
		t.Fatal("SeqStream")
	}
}

var created = time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC)

func TestAnnotateBytes(t *testing.T) {
	p := mustCompile(t, Spec{ExcludeEventTypes: "x", OriginName: "eu"})
	md, err := p.Annotate("OrderPlaced", []byte(`{"a":1}`), []byte(`{"b": [1, 2], "a":"<x>",  "$originalEventNumber": 9}`),
		Coordinates{Stream: "order-1", Number: 7, Created: created})
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := Signature("OrderPlaced", []byte(`{"a":1}`), []byte(`{"a":"<x>","b":[1,2]}`))
	want := `{"b":[1, 2],"a":"<x>","$originalStreamId":"order-1","$originalEventNumber":7,"$originalCreated":"2026-01-02T03:04:05.000000600Z","$origin":["eu"],"$signature":"` + sig + `"}`
	if string(md) != want {
		t.Fatalf("metadata\n %s\nwant\n %s", md, want)
	}
	if !json.Valid(md) {
		t.Fatal("not JSON")
	}

	cons := mustCompile(t, Spec{StreamTemplate: "all"})
	md, err = cons.Annotate("T", nil, nil, Coordinates{Stream: "c-1", Number: 0, Created: created, SubStream: "$ce-c", SubNumber: 41})
	if err != nil {
		t.Fatal(err)
	}
	sig, _ = Signature("T", nil, nil)
	want = `{"$originalStreamId":"c-1","$originalEventNumber":0,"$originalCreated":"2026-01-02T03:04:05.000000600Z","$subscriptionStreamId":"$ce-c","$subscriptionEventNumber":41,"$signature":"` + sig + `"}`
	if string(md) != want {
		t.Fatalf("empty metadata became\n %s\nwant\n %s", md, want)
	}
	prov, ok := ParseProvenance(md)
	if !ok || prov.OriginalStreamID != "c-1" || !prov.HasOriginalEventNumber || prov.SubscriptionStreamID != "$ce-c" ||
		prov.SubscriptionEventNumber != 41 || prov.Signature != sig || prov.OriginalCreated != "2026-01-02T03:04:05.000000600Z" {
		t.Fatalf("ParseProvenance = %+v, %v", prov, ok)
	}
}

// The signature is the same on every hop of a chain: the keys a hop adds
// are left out, and the user's metadata survives each hop's rewriting.
func TestSignatureStableAcrossHops(t *testing.T) {
	typ, data := "CustomerRenamed", []byte(`{"name":"Zoë"}`)
	orig := []byte(`{ "z":{"b":1, "a":2}, "$correlationId":"c-1", "é":"\u00e9" }`)
	hop1 := mustCompile(t, Spec{StreamTemplate: "all", OriginName: "us"})
	hop2 := mustCompile(t, Spec{ExcludeEventTypes: "x", OriginName: "eu"})
	md1, err := hop1.Annotate(typ, data, orig, Coordinates{Stream: "customer-1", Number: 3, Created: created, SubStream: "$ce-customer", SubNumber: 99})
	if err != nil {
		t.Fatal(err)
	}
	md2, err := hop2.Annotate(typ, data, md1, Coordinates{Stream: "all", Number: 17, Created: created})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := Signature(typ, data, orig)
	for i, md := range [][]byte{md1, md2} {
		prov, _ := ParseProvenance(md)
		if prov.Signature != want {
			t.Errorf("hop %d: signature %s, want %s", i+1, prov.Signature, want)
		}
		if got, _ := Signature(typ, data, md); got != want {
			t.Errorf("hop %d: recomputed signature %s, want %s", i+1, got, want)
		}
		u0, _ := UserMetadata(orig)
		u, _ := UserMetadata(md)
		if string(u) != string(u0) {
			t.Errorf("hop %d: user metadata %s, want %s", i+1, u, u0)
		}
	}
	prov2, _ := ParseProvenance(md2)
	if strings.Join(prov2.Origin, ",") != "us,eu" || prov2.OriginalStreamID != "all" || prov2.OriginalEventNumber != 17 || prov2.SubscriptionStreamID != "" {
		t.Fatalf("hop 2 provenance %+v", prov2)
	}
	// Any change to type, data or user metadata changes the signature.
	for _, s := range []string{
		mustSig(t, "CustomerRenamed2", data, orig), mustSig(t, typ, []byte(`{"name":"Zoe"}`), orig),
		mustSig(t, typ, data, []byte(`{"z":{"b":1,"a":3},"$correlationId":"c-1","é":"é"}`)),
		// Length prefixes: moving bytes between the parts changes it too.
		mustSig(t, typ+"{", []byte(`"name":"Zoë"}`), orig),
	} {
		if s == want {
			t.Errorf("a changed event has the same signature")
		}
	}
}

func mustSig(t *testing.T, typ string, data, md []byte) string {
	t.Helper()
	s, err := Signature(typ, data, md)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Metadata that is not a JSON object is never rewritten.
func TestNotObjectMetadata(t *testing.T) {
	p := mustCompile(t, Spec{IncludeEventTypes: "T"})
	for _, md := range []string{`[1]`, `"s"`, `null`, `{"a":1} {}`, `{"a":`, "\xc3\x28", `  `} {
		got, err := p.Annotate("T", nil, []byte(md), Coordinates{Stream: "s-1"})
		if md == "  " {
			if err != nil {
				t.Errorf("blank metadata: %v", err)
			}
			continue
		}
		if err == nil {
			t.Errorf("Annotate(%q) = %s, want an error", md, got)
		}
	}
	if r := p.NotObjectReason(); !strings.Contains(r, "metadata is not a JSON object") || !strings.Contains(r, "DITTO_INCLUDE_EVENT_TYPES") {
		t.Errorf("reason %q", r)
	}
	cons := mustCompile(t, Spec{StreamTemplate: "all"})
	if r := cons.NotObjectReason(); !strings.Contains(r, "DITTO_STREAM_TEMPLATE=all") {
		t.Errorf("reason %q", r)
	}
}

func TestReasonLabels(t *testing.T) {
	var got []string
	for _, r := range Reasons {
		got = append(got, r.String())
	}
	if strings.Join(got, ",") != "stream,system_event_type,event_type,metadata,origin" {
		t.Fatalf("reasons %q", got)
	}
	if strings.Join(got, ",") != strings.Join(metrics.FilterReasons, ",") {
		t.Fatalf("reasons %q, labels of ditto_events_filtered_total %q", got, metrics.FilterReasons)
	}
}

// An event whose $origin chain holds the destination's name is dropped in
// every mode, before the other filters look at it; other chains, a chain
// written as one name, and metadata without one pass.
func TestOriginLoops(t *testing.T) {
	for _, spec := range []Spec{
		{Provenance: true},
		{StreamTemplate: "dr-{stream}", Provenance: true},
		{ExcludeEventTypes: "Debug"},
		{StreamTemplate: "all"},
	} {
		spec.OriginName, spec.DestinationName = "eu", "us"
		p := mustCompile(t, spec)
		if p.DestinationName() != "us" {
			t.Fatalf("destination name %q", p.DestinationName())
		}
		for _, tc := range []struct {
			metadata string
			keep     bool
		}{
			{`{"$origin":["us"]}`, false},
			{`{"a":1,"$origin":["ap","us","eu"],"b":2}`, false},
			{`{"$origin":"us"}`, false},
			{`{"$origin":["eu"]}`, true},
			{`{"$origin":["usa"],"note":"\"$origin\":[\"us\"]"}`, true},
			{`{"$origin":[]}`, true},
			{`{}`, true},
			{``, true},
			{`not json, "$origin" us`, true},
		} {
			reason, keep := p.Keep("customer-1", "Created", []byte(tc.metadata))
			if keep != tc.keep || (!keep && reason != ByOrigin) {
				t.Errorf("%+v: Keep(%s) = %v, %v; want keep %v", spec, tc.metadata, reason, keep, tc.keep)
			}
		}
		// A stream filter speaks first.
		q := mustCompile(t, Spec{ExcludeStreams: "customer-", Provenance: true, OriginName: "eu", DestinationName: "us"})
		if reason, _ := q.Keep("customer-1", "Created", []byte(`{"$origin":["us"]}`)); reason != ByStream {
			t.Errorf("reason %v, want stream", reason)
		}
	}
	// Without a destination name nothing is dropped for its origin.
	p := mustCompile(t, Spec{Provenance: true, OriginName: "eu"})
	if _, keep := p.Keep("customer-1", "Created", []byte(`{"$origin":["us"]}`)); !keep {
		t.Error("dropped without DITTO_DESTINATION_NAME")
	}
}

func TestExtend(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{``, `{"$k":"v","$n":7}`},
		{` {} `, `{"$k":"v","$n":7}`},
		{`{"a": [1, 2], "$k": "old", "b":{"c":null}}`, `{"a":[1, 2],"b":{"c":null},"$k":"v","$n":7}`},
	} {
		got, err := Extend([]byte(tc.in), []string{"$k", "$n"}, []json.RawMessage{String("v"), json.RawMessage("7")})
		if err != nil || string(got) != tc.want {
			t.Errorf("Extend(%s) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
	if _, err := Extend([]byte(`[1]`), []string{"$k"}, []json.RawMessage{String("v")}); err == nil {
		t.Error("Extend of an array succeeded")
	}
}

// members agrees with encoding/json on every object it accepts, and
// rejects what is not an object.
func FuzzMembers(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { } `, `{"a":1}`, `{"a" : "x\"}y" , "b":[1,{"c":"]"}], "d":{"e":null}}`,
		`{"k\u00e9y":true,"a":1,"a":2}`, `{"n":-1.5e+10,"s":"\\","t":"\u2028"}`, "{\n\t\"a\"\r:\n[ ]\n}",
		`[1]`, `"s"`, `null`, `{"a":1} {}`, `{"a":`, "\xc3\x28", ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ms, err := members(nil, b)
		var want map[string]json.RawMessage
		werr := json.Unmarshal(b, &want)
		if len(strings.Trim(string(b), " \t\n\r")) == 0 {
			if err != nil || len(ms) != 0 {
				t.Fatalf("empty metadata: %v, %v", ms, err)
			}
			return
		}
		if werr != nil || want == nil {
			if err == nil {
				t.Fatalf("members(%q) accepted what is not an object", b)
			}
			return
		}
		if err != nil {
			t.Fatalf("members(%q): %v", b, err)
		}
		if len(ms) != len(want) {
			t.Fatalf("members(%q) = %d members, want %d", b, len(ms), len(want))
		}
		for _, m := range ms {
			var got, exp any
			if json.Unmarshal(m.value, &got) != nil || json.Unmarshal(want[m.key], &exp) != nil || fmt.Sprint(got) != fmt.Sprint(exp) {
				t.Fatalf("members(%q): %q = %s, want %s", b, m.key, m.value, want[m.key])
			}
		}
	})
}
