package pbwire

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// sameRead reports whether two decoded messages hold the same values; an
// empty byte field equals an absent one, as for protobuf.
func sameRead(a, b ReadMessage) bool {
	if a.RetryCount != b.RetryCount || a.SubscriptionID != b.SubscriptionID || (a.Event == nil) != (b.Event == nil) {
		return false
	}
	if a.Event == nil {
		return true
	}
	if (a.Event.Commit == nil) != (b.Event.Commit == nil) || (a.Event.Commit != nil && *a.Event.Commit != *b.Event.Commit) {
		return false
	}
	return sameRecorded(a.Event.Event, b.Event.Event) && sameRecorded(a.Event.Link, b.Event.Link)
}

func sameRecorded(a, b *esdb.RecordedEvent) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := *a, *b
	if !bytes.Equal(x.Data, y.Data) || !bytes.Equal(x.UserMetadata, y.UserMetadata) {
		return false
	}
	x.Data, y.Data, x.UserMetadata, y.UserMetadata = nil, nil, nil, nil
	return reflect.DeepEqual(x, y)
}

// viaProtobuf is the reference: protobuf decodes, then the conversion the
// client makes.
func viaProtobuf(t testing.TB, b []byte) (ReadMessage, error) {
	t.Helper()
	var resp persistent.ReadResp
	if err := proto.Unmarshal(b, &resp); err != nil {
		return ReadMessage{}, err
	}
	return fromReadResp(&resp), nil
}

func confirmation(id string) *persistent.ReadResp {
	return &persistent.ReadResp{Content: &persistent.ReadResp_SubscriptionConfirmation_{
		SubscriptionConfirmation: &persistent.ReadResp_SubscriptionConfirmation{SubscriptionId: id}}}
}

func TestDecodeReadMatchesProtobuf(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	msgs := []*persistent.ReadResp{confirmation("$ce-customer::ditto"), confirmation(""), typicalReadResp()}
	for range 500 {
		msgs = append(msgs, randomReadResp(r))
	}
	for i, m := range msgs {
		b := marshal(t, m)
		want, err := viaProtobuf(t, b)
		if err != nil {
			t.Fatal(err)
		}
		// Every shape a server sends takes the fast path.
		got, err := decodeReadFast(b)
		if err != nil {
			t.Fatalf("message %d: fast path refused %v: %v", i, m, err)
		}
		if !sameRead(got, want) {
			t.Fatalf("message %d: decoded %+v, want %+v", i, got, want)
		}
	}
}

func TestDecodeReadValues(t *testing.T) {
	m := typicalReadResp()
	m.GetEvent().GetLink().Metadata[mdType] = "$>"
	m.GetEvent().Count = &persistent.ReadResp_ReadEvent_RetryCount{RetryCount: 2}
	got, err := DecodeRead(marshal(t, m))
	if err != nil {
		t.Fatal(err)
	}
	ev := got.Event
	if ev == nil || ev.Event == nil || ev.Link == nil || ev.Commit == nil {
		t.Fatalf("decoded %+v", got)
	}
	if ev.Event.StreamID != "customer-42" || ev.Link.StreamID != "$ce-customer" || ev.Event.EventType != "customer-registered" ||
		ev.Event.ContentType != "application/json" || ev.Link.EventType != "$>" || got.RetryCount != 2 {
		t.Fatalf("decoded %+v / %+v, retry %d", *ev.Event, *ev.Link, got.RetryCount)
	}
	if want := time.Unix(0, 17636034000000000*100).UTC(); !ev.Event.CreatedDate.Equal(want) {
		t.Fatalf("created %v, want %v", ev.Event.CreatedDate, want)
	}
	if ev.OriginalEvent() != ev.Link {
		t.Fatal("the original record of a resolved link is the link")
	}
}

// TestDecodeReadOtherShapes: shapes the fast path leaves to protobuf decode
// to the same values, broken bytes are an error, a creation time that is not
// a number is the zero time.
func TestDecodeReadOtherShapes(t *testing.T) {
	typical := marshal(t, typicalReadResp())
	event := func() []byte { // the ReadEvent inside typical
		f, _, err := next(typical)
		if err != nil {
			t.Fatal(err)
		}
		return f.v
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"unknown field", protowire.AppendVarint(protowire.AppendTag(append([]byte{}, typical...), 9, protowire.VarintType), 1)},
		{"event sent twice (merged)", append(append([]byte{}, typical...), typical...)},
		{"unknown field in a record", lenField(fReadRespEvent, lenField(fReadEventEvent, protowire.AppendVarint(protowire.AppendTag(nil, 15, protowire.VarintType), 3)))},
		{"fixed64 field", lenField(fReadRespEvent, protowire.AppendFixed64(protowire.AppendTag(event(), 20, protowire.Fixed64Type), 7))},
		{"event and confirmation", append(append([]byte{}, typical...), marshal(t, confirmation("x"))...)},
		{"empty message", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := viaProtobuf(t, tc.b)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeRead(tc.b)
			if err != nil {
				t.Fatal(err)
			}
			if !sameRead(got, want) {
				t.Fatalf("decoded %+v, want %+v", got, want)
			}
		})
	}
	for _, b := range [][]byte{
		typical[:len(typical)-1],
		lenField(fReadRespConfirmation, lenField(fConfirmationID, []byte("\xff"))),
		lenField(fReadRespEvent, lenField(fReadEventEvent, lenField(fRecMetadata, lenField(fMapKey, []byte("\xfe"))))),
	} {
		if _, err := DecodeRead(b); err == nil {
			t.Errorf("DecodeRead(%x) accepted bytes protobuf refuses", b)
		}
	}
	m := typicalReadResp()
	m.GetEvent().GetEvent().Metadata[mdCreated] = "yesterday"
	got, err := DecodeRead(marshal(t, m))
	if err != nil || !got.Event.Event.CreatedDate.IsZero() {
		t.Fatalf("created %v, %v; want the zero time", got.Event.Event.CreatedDate, err)
	}
}

// TestRawThroughTheCodec: Raw goes out as it is. It comes in as the
// received bytes when grpc gave them in one buffer of their own, and as a
// copy when they are spread over several or in a pooled buffer, which grpc
// reuses.
func TestRawThroughTheCodec(t *testing.T) {
	out, err := Codec{}.Marshal(&Raw{'a', 'b', 'c'})
	if err != nil || !bytes.Equal(out.Materialize(), []byte("abc")) {
		t.Fatalf("marshalled %q, %v", out.Materialize(), err)
	}
	receive := func(data mem.BufferSlice) Raw {
		t.Helper()
		var r Raw
		if err := (Codec{}).Unmarshal(data, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}

	own := mem.SliceBuffer("abcdef")
	if r := receive(mem.BufferSlice{own}); &r[0] != &own[0] || cap(r) != len(own) {
		t.Fatal("a message in a buffer of its own was copied, or can be appended into")
	}

	in := []byte("abcdef")
	r := receive(mem.BufferSlice{mem.SliceBuffer(in[:3]), mem.SliceBuffer(in[3:])})
	in[0] = 'x'
	if string(r) != "abcdef" {
		t.Fatalf("received %q; a message in several buffers must be copied", r)
	}

	pool := mem.DefaultBufferPool()
	big := bytes.Repeat([]byte("abcdef"), 1000) // above grpc's pooling threshold
	buf := pool.Get(len(big))
	copy(*buf, big)
	pooled := mem.NewBuffer(buf, pool)
	r = receive(mem.BufferSlice{pooled})
	if &r[0] == &pooled.ReadOnlyData()[0] || !bytes.Equal(r, big) {
		t.Fatal("a message in a pooled buffer must be copied")
	}
	pooled.Free()
}

// FuzzDecodeRead: for any bytes, DecodeRead accepts exactly what protobuf
// accepts and gives the values of protobuf and the client's conversion.
func FuzzDecodeRead(f *testing.F) {
	r := rand.New(rand.NewPCG(9, 10))
	for range 20 {
		b, _ := proto.Marshal(randomReadResp(r))
		f.Add(b)
	}
	b, _ := proto.Marshal(confirmation("$ce-customer::ditto"))
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		got, errGot := DecodeRead(b)
		want, errWant := viaProtobuf(t, b)
		if (errGot == nil) != (errWant == nil) {
			t.Fatalf("DecodeRead error %v, protobuf error %v", errGot, errWant)
		}
		if errWant == nil && !sameRead(got, want) {
			t.Fatalf("DecodeRead %+v, protobuf %+v", got, want)
		}
	})
}

// TestEntryBytesShapes: every shape of a map entry decodes as a walk of its
// fields with protowire does, the usual one (key, then value, short) read in
// place included.
func TestEntryBytesShapes(t *testing.T) {
	field := func(num protowire.Number, v string) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), []byte(v))
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	long := strings.Repeat("x", 200)
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"key then value", cat(field(fMapKey, "type"), field(fMapValue, "customer-registered"))},
		{"value then key", cat(field(fMapValue, "customer-registered"), field(fMapKey, "type"))},
		{"long key", cat(field(fMapKey, long), field(fMapValue, "v"))},
		{"long value", cat(field(fMapKey, "type"), field(fMapValue, long))},
		{"empty key and value", cat(field(fMapKey, ""), field(fMapValue, ""))},
		{"key only", field(fMapKey, "type")},
		{"value only", field(fMapValue, "v")},
		{"empty", nil},
		{"key twice", cat(field(fMapKey, "a"), field(fMapKey, "b"), field(fMapValue, "v"))},
		{"trailing byte", append(cat(field(fMapKey, "type"), field(fMapValue, "v")), 0)},
		{"value cut short", cat(field(fMapKey, "type"), field(fMapValue, "value"))[:10]},
		{"unknown field", cat(field(fMapKey, "type"), field(fMapValue, "v"), field(3, "x"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantK, wantV, wantOK := walkEntry(tc.b)
			k, v, err := entryBytes(tc.b)
			if (err == nil) != wantOK || string(k) != string(wantK) || string(v) != string(wantV) {
				t.Fatalf("entryBytes = %q, %q, %v; want %q, %q, ok %v", k, v, err, wantK, wantV, wantOK)
			}
			if err == nil && (cap(k) != len(k) || cap(v) != len(v)) {
				t.Fatal("an entry's key or value can be appended to over the bytes after it")
			}
		})
	}
}

// walkEntry decodes a map entry field by field with protowire: ok is false
// for a field other than a key or value, one sent twice, or broken bytes.
func walkEntry(b []byte) (k, v []byte, ok bool) {
	var seen [3]bool
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.BytesType || (num != fMapKey && num != fMapValue) || seen[num] {
			return nil, nil, false
		}
		seen[num] = true
		val, m := protowire.ConsumeBytes(b[n:])
		if m < 0 {
			return nil, nil, false
		}
		if num == fMapKey {
			k = val
		} else {
			v = val
		}
		b = b[n+m:]
	}
	return k, v, true
}
func withUnknownField[M proto.Message](m M) M {
	m.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 7))
	return m
}
func lenField(num protowire.Number, parts ...[]byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), bytes.Join(parts, nil))
}
