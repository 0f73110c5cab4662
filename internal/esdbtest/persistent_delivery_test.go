package esdbtest

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"github.com/ditto-replicator/ditto/internal/pbwire"
)

// psDeliveryCases are deliveries in every shape psEventResp builds: both
// UUID forms (ids whose halves are negative, zero or small), an event alone,
// a resolved link, an unresolved link, retry counts, zero and large
// positions, empty and non-empty custom metadata and data, revision 0 and
// the tombstone, created before and after the Unix epoch, a link created
// at another instant than its event and one at the same instant (in another
// time zone), and lengths on both sides of one-byte length prefixes (a
// stream name of 130 bytes, types whose metadata entry is 127 and 128 bytes
// long).
func psDeliveryCases() []ResolvedRecord {
	created := time.Date(2024, 5, 6, 7, 8, 9, 123456700, time.UTC)
	ev := &Record{
		Stream: "order-7", Number: 3, ID: uuid.MustParse("f3a1c2d4-5b6e-4f70-8a9b-0c1d2e3f4a5b"),
		Type: "OrderPlaced", IsJSON: true, Data: []byte(`{"total":12}`), Metadata: []byte(`{"$correlationId":"c-1"}`),
		Created: created, Position: 1234,
	}
	link := &Record{
		Stream: "$ce-order", Number: 0, ID: uuid.MustParse("00000000-0000-0000-0000-000000000001"),
		Type: "$>", Data: []byte("3@order-7"), Created: created.Add(time.Millisecond), Position: 1 << 40,
	}
	bare := &Record{
		Stream: "s", Number: 1, ID: uuid.UUID{}, Type: "", Created: time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC),
	}
	tomb := &Record{
		Stream: "gone", Number: Tombstone, ID: uuid.MustParse("7fffffff-ffff-ffff-ffff-ffffffffffff"),
		Type: "$streamDeleted", Created: created, Position: math.MaxUint64,
	}
	utf := &Record{
		Stream: "ström-1", Number: 1 << 33, ID: uuid.New(), Type: "Bestätigt✓", IsJSON: true,
		Data: bytes.Repeat([]byte("x"), 300), Created: created, Position: 99,
	}
	sameInstant := &Record{
		Stream: "$ce-order", Number: 1, ID: uuid.MustParse("80000000-0000-0000-8000-000000000000"),
		Type: "$>", Data: []byte("3@order-7"), Created: created.In(time.FixedZone("UTC+1", 3600)), Position: 1235,
	}
	longName := &Record{
		Stream: strings.Repeat("s", 130), Number: 5, ID: uuid.New(), Type: strings.Repeat("T", 119),
		Data: []byte("{}"), Created: created, Position: 1 << 20,
	}
	longType := &Record{
		Stream: "$ce-s", Number: 6, ID: uuid.New(), Type: strings.Repeat("T", 120),
		Data: []byte("5@" + longName.Stream), Created: created, Position: 1<<20 + 1,
	}
	return []ResolvedRecord{
		{Event: longName, Link: longType},
		{Event: ev},
		{Event: ev, Link: sameInstant},
		{Event: ev, Link: link},
		{Link: link},
		{Event: bare},
		{Event: tomb},
		{Event: utf, Link: tomb},
	}
}

// The hand-encoded delivery equals the ReadResp psEventResp builds: byte for
// byte against deterministic protobuf (metadata in key order), and decoded
// against what the pbwire codec sends for that message (its map order is
// random, so those bytes are compared decoded).
func TestPSDeliveryMatchesReadResp(t *testing.T) {
	for i, ev := range psDeliveryCases() {
		for _, stringIDs := range []bool{false, true} {
			for _, retry := range []int32{0, 1, 10, math.MaxInt32, -1} {
				name := fmt.Sprintf("case %d stringIDs %v retry %d", i, stringIDs, retry)
				want := psEventResp(ev, retry, stringIDs)
				got, ok := psDelivery(nil, ev, retry, stringIDs)
				if !ok {
					t.Fatalf("%s: not encoded", name)
				}
				det, err := proto.MarshalOptions{Deterministic: true}.Marshal(want)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, det) {
					t.Fatalf("%s: bytes differ from deterministic protobuf\n got %x\nwant %x", name, []byte(got), det)
				}
				if cap(got) != len(got) {
					t.Fatalf("%s: buffer sized %d for %d bytes", name, cap(got), len(got))
				}
				decoded := &persistent.ReadResp{}
				if err := proto.Unmarshal(got, decoded); err != nil || !proto.Equal(decoded, want) {
					t.Fatalf("%s: decoded %v (%v), want %v", name, decoded, err, want)
				}
				old, err := pbwire.Codec{}.Marshal(want)
				if err != nil {
					t.Fatal(err)
				}
				if len(old.Materialize()) != len(got) {
					t.Fatalf("%s: %d bytes, pbwire sends %d", name, len(got), len(old.Materialize()))
				}
				fromOld := &persistent.ReadResp{}
				if err := proto.Unmarshal(old.Materialize(), fromOld); err != nil || !proto.Equal(fromOld, decoded) {
					t.Fatalf("%s: pbwire sends %v (%v), hand encoding decodes to %v", name, fromOld, err, decoded)
				}
			}
		}
	}
}

// Deliveries encoded through one arena, many at a time, are each exactly
// the bytes of their own encoding, in exactly sized buffers that stay
// intact while later ones are written, and their wires carry those bytes.
// Once the transport frees a wire, its buffer goes back to the pool, and
// only then.
func TestPSArenaDeliveriesStayIntact(t *testing.T) {
	pool := &recordingPool{}
	a := psArena{pool: pool}
	big := &Record{Stream: "big", ID: uuid.New(), Type: "Big", Data: bytes.Repeat([]byte("b"), 2*psBufferCap), Created: time.Now(), Position: 7}
	cases := append(psDeliveryCases(), ResolvedRecord{Event: big})
	type sent struct {
		want []byte
		wire psWire
	}
	var all []sent
	for i := 0; i < 3*psArenaWires; i++ {
		for _, ev := range cases {
			want, _ := psDelivery(nil, ev, int32(i), i%2 == 0)
			got, ok := psDelivery(&a, ev, int32(i), i%2 == 0)
			if !ok || cap(got) != len(got) {
				t.Fatalf("delivery %d: ok %v, %d bytes in a buffer of %d", i, ok, len(got), cap(got))
			}
			all = append(all, sent{want, a.wire(got)})
		}
	}
	for i, s := range all {
		if len(s.wire.data) != 1 || !bytes.Equal(s.wire.data.Materialize(), s.want) {
			t.Fatalf("delivery %d: wire holds %x, want %x", i, s.wire.data.Materialize(), s.want)
		}
	}
	if len(pool.put) != 0 {
		t.Fatalf("%d buffers went back to the pool before the transport freed them", len(pool.put))
	}
	for _, s := range all {
		s.wire.data.Free()
	}
	if len(pool.put) != len(all) {
		t.Fatalf("%d of %d buffers went back to the pool once freed", len(pool.put), len(all))
	}
	for _, b := range pool.put {
		if cap(*b) < psBufferCap {
			t.Fatalf("a buffer went back with a capacity of %d, below the pool's %d", cap(*b), psBufferCap)
		}
	}
}

// recordingPool is psBufferPool that keeps every buffer given back.
type recordingPool struct {
	psBufferPool
	put []*[]byte
}

func (p *recordingPool) Put(b *[]byte) { p.put = append(p.put, b) }

// psBufferPool hands out buffers of the asked length, recycles those of its
// own capacity and leaves larger ones to the collector.
func TestPSBufferPool(t *testing.T) {
	var p psBufferPool
	for _, n := range []int{0, 1, 700, psBufferCap, psBufferCap + 1} {
		b := p.Get(n)
		if len(*b) != n || cap(*b) < n {
			t.Fatalf("Get(%d): len %d, cap %d", n, len(*b), cap(*b))
		}
		if want := max(n, psBufferCap); cap(*b) != want {
			t.Fatalf("Get(%d): cap %d, want %d", n, cap(*b), want)
		}
		p.Put(b)
	}
}

// A type that is not valid UTF-8 is left to the old path, where the protobuf
// runtime refuses it and the send fails as before.
func TestPSDeliveryInvalidUTF8TypeTakesOldPath(t *testing.T) {
	bad := &Record{Stream: "s", ID: uuid.New(), Type: "\xff", Created: time.Now(), Position: 1}
	good := &Record{Stream: "$ce-s", ID: uuid.New(), Type: "$>", Data: []byte("0@s"), Created: time.Now(), Position: 2}
	for _, ev := range []ResolvedRecord{{Event: bad}, {Event: bad, Link: good}, {Event: good, Link: bad}} {
		if _, ok := psDelivery(nil, ev, 0, false); ok {
			t.Fatalf("%+v: encoded by hand", ev)
		}
		if _, err := (pbwire.Codec{}).Marshal(psEventResp(ev, 0, false)); err == nil {
			t.Fatalf("%+v: the old path encodes it", ev)
		}
	}
}

// End to end: what a consumer receives on the wire, for both UUID options,
// resolved and unresolved links and a retry, equals psEventResp's message
// for the stored records.
func TestPSGRPCDeliveriesEqualReadResp(t *testing.T) {
	srv, c := psClient(t)
	ctx := context.Background()
	for _, s := range []string{"order-1", "order-2"} {
		evs := psEvents(2)
		evs[0].Metadata = []byte(`{"$correlationId":"x"}`)
		evs[1].ContentType = esdb.ContentTypeBinary
		if _, err := c.AppendToStream(ctx, s, esdb.AppendToStreamOptions{}, evs...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.DeleteStream(ctx, "order-2", esdb.DeleteStreamOptions{}); err != nil {
		t.Fatal(err) // its links in $ce-order no longer resolve
	}
	want, err := srv.Store().ReadStream("$ce-order", 0, true, 100, true)
	if err != nil || len(want) < 4 {
		t.Fatalf("$ce-order: %d records (%v)", len(want), err)
	}
	if want[0].Event == nil || want[0].Link == nil || want[2].Event != nil || want[2].Link == nil {
		t.Fatalf("want resolved links to order-1 and unresolved ones to order-2: %+v", want)
	}
	for _, stringIDs := range []bool{false, true} {
		group := fmt.Sprintf("g-%v", stringIDs)
		settings := psClientSettings(esdb.ConsumerStrategyRoundRobin)
		settings.ResolveLinkTos = true
		if err := c.CreatePersistentSubscription(ctx, "$ce-order", group, esdb.PersistentStreamSubscriptionOptions{StartFrom: esdb.Start{}, Settings: settings}); err != nil {
			t.Fatal(err)
		}
		rc := psRawRead(t, srv, "$ce-order", group, stringIDs, 10)
		for retry := int32(0); retry < 2; retry++ {
			var ids []*shared.UUID
			for i, w := range want {
				resp, err := rc.Recv()
				if err != nil {
					t.Fatal(err)
				}
				if exp := psEventResp(w, retry, stringIDs); !proto.Equal(resp, exp) {
					t.Fatalf("stringIDs %v retry %d message %d:\n got %v\nwant %v", stringIDs, retry, i, resp, exp)
				}
				ids = append(ids, resp.GetEvent().GetLink().GetId())
			}
			// Retry them all once: the second round carries retry_count 1.
			if retry == 0 {
				if err := rc.Send(&persistent.ReadReq{Content: &persistent.ReadReq_Nack_{Nack: &persistent.ReadReq_Nack{
					Ids: ids, Action: persistent.ReadReq_Nack_Retry,
				}}}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// BenchmarkPSDeliveryEncode compares the bytes of one delivery (a resolved
// $ce link to an event of the bench's size) built as a ReadResp and encoded
// by pbwire, against the hand encoding sent as pbwire.Raw. The new case
// reports the speed-up over the old one measured in the same run.
func BenchmarkPSDeliveryEncode(b *testing.B) {
	created := time.Now()
	ev := ResolvedRecord{
		Event: &Record{
			Stream: "bench-17", Number: 42, ID: uuid.New(), Type: "BenchEventHappened", IsJSON: true,
			Data:     bytes.Repeat([]byte("d"), 200),
			Metadata: bytes.Repeat([]byte("m"), 60), Created: created, Position: 4242,
		},
		Link: &Record{
			Stream: "$ce-bench", Number: 4200, ID: uuid.New(), Type: "$>", Data: []byte("42@bench-17"),
			Created: created, Position: 4243,
		},
	}
	for _, stringIDs := range []bool{false, true} {
		var oldNs float64
		var sink int
		b.Run(fmt.Sprintf("stringIDs=%v/old", stringIDs), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				data, err := pbwire.Codec{}.Marshal(psEventResp(ev, 1, stringIDs))
				if err != nil {
					b.Fatal(err)
				}
				sink += data.Len()
				data.Free()
			}
			oldNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		})
		b.Run(fmt.Sprintf("stringIDs=%v/new", stringIDs), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				raw, ok := psDelivery(nil, ev, 1, stringIDs)
				if !ok {
					b.Fatal("not encoded")
				}
				data, err := pbwire.Codec{}.Marshal(&raw)
				if err != nil {
					b.Fatal(err)
				}
				sink += data.Len()
			}
			if newNs := float64(b.Elapsed().Nanoseconds()) / float64(b.N); oldNs > 0 && newNs > 0 {
				b.ReportMetric(oldNs/newNs, "x-faster")
			}
		})
		_ = sink
	}
}
