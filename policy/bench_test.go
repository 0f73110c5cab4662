package policy

import "testing"

// An event about the size of the benchmark's (go run ./bench): 200 bytes
// of data, 60 of metadata.
var (
	benchData = []byte(`{"customerId":"customer-123","name":"Some Name Here","email":"someone@example.com","address":{"street":"Main Street 1","city":"Town","zip":"12345"},"n":12345,"pad":"xxxxxxxxxxxxxxxxxxxxxxxx"}`)
	benchMeta = []byte(`{"$correlationId":"8f0d3a2e-1","$causationId":"8f0d3a2e-2"}`)
)

// The cost per kept event of a filtered copy: provenance and signature.
func BenchmarkAnnotate(b *testing.B) {
	p := mustCompile(b, Spec{ExcludeEventTypes: "X"})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Annotate("BenchEventNoted", benchData, benchMeta, Coordinates{Stream: "bench-1", Number: 7, Created: created}); err != nil {
			b.Fatal(err)
		}
	}
}

// The cost per event of a metadata filter.
func BenchmarkKeepMetadata(b *testing.B) {
	p := mustCompile(b, Spec{ExcludeMetadata: "$causationId=x"})
	b.ReportAllocs()
	for b.Loop() {
		if _, keep := p.Keep("bench-1", "BenchEventNoted", benchMeta); !keep {
			b.Fatal("dropped")
		}
	}
}

// The cost per event of a stream template.
func BenchmarkDestination(b *testing.B) {
	for _, tmpl := range []string{"dr-{stream}", "{category}-replica-{id}", "all-customers"} {
		p := mustCompile(b, Spec{StreamTemplate: tmpl})
		b.Run(tmpl, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.Destination("customer-1234")
			}
		})
	}
}
