package pbwire

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
)

// randomUUID returns any of the shapes a UUID can take on the wire.
func randomUUID(r *rand.Rand) *shared.UUID {
	switch r.IntN(4) {
	case 0:
		return nil
	case 1:
		return &shared.UUID{}
	case 2:
		return &shared.UUID{Value: &shared.UUID_String_{String_: fmt.Sprintf("%08x-0000-4000-8000-%012x", r.Uint32(), r.Uint64()>>16)}}
	}
	return &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
		MostSignificantBits:  pick(r, 0, -1, math.MinInt64, int64(r.Uint64())),
		LeastSignificantBits: pick(r, 0, 1, math.MaxInt64, int64(r.Uint64())),
	}}}
}

func pick[T any](r *rand.Rand, vs ...T) T { return vs[r.IntN(len(vs))] }

func randomBytes(r *rand.Rand) []byte {
	if r.IntN(4) == 0 {
		return nil
	}
	b := make([]byte, pick(r, 0, 1, 100, 200, 5000))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func randomMap(r *rand.Rand) map[string]string {
	if r.IntN(5) == 0 {
		return nil
	}
	m := map[string]string{}
	for range r.IntN(5) {
		m[pick(r, "type", "content-type", "created", "", "é-ключ")] = pick(r, "", "application/json", "customer-registered", "638700000000000000", "ünïcode")
	}
	return m
}

func randomRecorded(r *rand.Rand) *persistent.ReadResp_ReadEvent_RecordedEvent {
	if r.IntN(4) == 0 {
		return nil
	}
	rec := &persistent.ReadResp_ReadEvent_RecordedEvent{
		Id:              randomUUID(r),
		StreamRevision:  pick(r, 0, 1, math.MaxUint64, r.Uint64()),
		PreparePosition: pick(r, 0, 300, r.Uint64()),
		CommitPosition:  pick(r, 0, 300, r.Uint64()),
		Metadata:        randomMap(r),
		CustomMetadata:  randomBytes(r),
		Data:            randomBytes(r),
	}
	if r.IntN(4) > 0 {
		rec.StreamIdentifier = &shared.StreamIdentifier{StreamName: []byte(pick(r, "", "customer-42", "$ce-customer"))}
	}
	return rec
}

func randomReadResp(r *rand.Rand) *persistent.ReadResp {
	e := &persistent.ReadResp_ReadEvent{Event: randomRecorded(r), Link: randomRecorded(r)}
	switch r.IntN(3) {
	case 1:
		e.Position = &persistent.ReadResp_ReadEvent_CommitPosition{CommitPosition: pick[uint64](r, 0, r.Uint64())}
	case 2:
		e.Position = &persistent.ReadResp_ReadEvent_NoPosition{NoPosition: &shared.Empty{}}
	}
	switch r.IntN(3) {
	case 1:
		e.Count = &persistent.ReadResp_ReadEvent_RetryCount{RetryCount: pick[int32](r, 0, 1, -1, math.MaxInt32, math.MinInt32)}
	case 2:
		e.Count = &persistent.ReadResp_ReadEvent_NoRetryCount{NoRetryCount: &shared.Empty{}}
	}
	return &persistent.ReadResp{Content: &persistent.ReadResp_Event{Event: e}}
}

func randomAppendReq(r *rand.Rand) *streams.AppendReq {
	return &streams.AppendReq{Content: &streams.AppendReq_ProposedMessage_{ProposedMessage: &streams.AppendReq_ProposedMessage{
		Id:             randomUUID(r),
		Metadata:       randomMap(r),
		CustomMetadata: randomBytes(r),
		Data:           randomBytes(r),
	}}}
}

// split hands b to the codec in two buffers, as grpc does for messages that
// span frames.
func split(b []byte) mem.BufferSlice {
	h := len(b) / 2
	return mem.BufferSlice{mem.SliceBuffer(bytes.Clone(b[:h])), mem.SliceBuffer(bytes.Clone(b[h:]))}
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	out, err := Codec{}.Marshal(m)
	if err != nil {
		t.Fatalf("Marshal(%v): %v", m, err)
	}
	defer out.Free()
	return out.Materialize()
}

// TestRoundTripAgainstProtobuf checks both directions against the protobuf
// runtime: what the codec writes, protobuf reads as the same message, and
// what protobuf writes, the codec reads as the same message.
func TestRoundTripAgainstProtobuf(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		var m, fast, std proto.Message
		if i%2 == 0 {
			m, fast, std = randomReadResp(r), &persistent.ReadResp{}, &persistent.ReadResp{}
		} else {
			m, fast, std = randomAppendReq(r), &streams.AppendReq{}, &streams.AppendReq{}
		}
		b := marshal(t, m)
		if err := proto.Unmarshal(b, std); err != nil {
			t.Fatalf("protobuf cannot read the codec's bytes of %v: %v", m, err)
		}
		if !proto.Equal(m, std) {
			t.Fatalf("codec wrote %v, protobuf read back %v", m, std)
		}
		want, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != len(want) {
			t.Fatalf("codec wrote %d bytes for %v, protobuf %d", len(b), m, len(want))
		}
		if err := (Codec{}).Unmarshal(split(want), fast); err != nil {
			t.Fatalf("codec cannot read protobuf's bytes of %v: %v", m, err)
		}
		if !proto.Equal(m, fast) {
			t.Fatalf("protobuf wrote %v, codec read back %v", m, fast)
		}
	}
}

// TestHandDecoderTakesTheFastPath guards the point of the package: the
// shapes ditto and the test server exchange are decoded by hand, not handed
// back to protobuf.
func TestHandDecoderTakesTheFastPath(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		rr := randomReadResp(r)
		b, _ := proto.Marshal(rr)
		if err := decodeReadResp(b, &persistent.ReadResp{}); err != nil {
			t.Fatalf("decodeReadResp(%v): %v", rr, err)
		}
		ar := randomAppendReq(r)
		b, _ = proto.Marshal(ar)
		if err := decodeAppendReq(b, &streams.AppendReq{}); err != nil {
			t.Fatalf("decodeAppendReq(%v): %v", ar, err)
		}
	}
}

// TestOtherShapesGoThroughProtobuf covers what the hand code declines:
// unknown fields, the other oneof cases, other message types and invalid
// UTF-8, which protobuf refuses.
func TestOtherShapesGoThroughProtobuf(t *testing.T) {
	withUnknown := randomReadResp(rand.New(rand.NewPCG(5, 6)))
	withUnknown.Content.(*persistent.ReadResp_Event).Event.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 7))
	cases := map[string]proto.Message{
		"unknown field": withUnknown,
		"confirmation": &persistent.ReadResp{Content: &persistent.ReadResp_SubscriptionConfirmation_{
			SubscriptionConfirmation: &persistent.ReadResp_SubscriptionConfirmation{SubscriptionId: "sub-1"}}},
		"append options": &streams.AppendReq{Content: &streams.AppendReq_Options_{Options: &streams.AppendReq_Options{
			StreamIdentifier:       &shared.StreamIdentifier{StreamName: []byte("customer-1")},
			ExpectedStreamRevision: &streams.AppendReq_Options_Revision{Revision: 41}}}},
		"ack request": &persistent.ReadReq{Content: &persistent.ReadReq_Ack_{Ack: &persistent.ReadReq_Ack{
			Id: []byte("sub-1"), Ids: []*shared.UUID{{Value: &shared.UUID_String_{String_: "x"}}}}}},
		"empty read response": &persistent.ReadResp{},
	}
	for name, m := range cases {
		t.Run(name, func(t *testing.T) {
			b := marshal(t, m)
			want, _ := proto.Marshal(m)
			if !bytes.Equal(b, want) {
				t.Fatalf("codec wrote %x, protobuf %x", b, want)
			}
			got := m.ProtoReflect().New().Interface()
			if err := (Codec{}).Unmarshal(split(b), got); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(m, got) {
				t.Fatalf("read back %v, want %v", got, m)
			}
		})
	}

	bad := &streams.AppendReq{Content: &streams.AppendReq_ProposedMessage_{ProposedMessage: &streams.AppendReq_ProposedMessage{
		Metadata: map[string]string{"type": "\xff"}}}}
	if _, err := (Codec{}).Marshal(bad); err == nil {
		t.Fatal("invalid UTF-8 in a metadata value was encoded; protobuf refuses it")
	}
	b := protowire.AppendTag(nil, fAppendProposed, protowire.BytesType)
	entry := protowire.AppendBytes(protowire.AppendTag(nil, fMapValue, protowire.BytesType), []byte("\xff"))
	inner := protowire.AppendBytes(protowire.AppendTag(nil, fPropMetadata, protowire.BytesType), entry)
	b = protowire.AppendBytes(b, inner)
	if err := (Codec{}).Unmarshal(split(b), &streams.AppendReq{}); err == nil {
		t.Fatal("invalid UTF-8 in a metadata value was decoded; protobuf refuses it")
	}
}

// TestDecodedFieldsDoNotOverlap: byte fields share one buffer, so appending
// to one must not overwrite the next.
func TestDecodedFieldsDoNotOverlap(t *testing.T) {
	m := &persistent.ReadResp{Content: &persistent.ReadResp_Event{Event: &persistent.ReadResp_ReadEvent{
		Event: &persistent.ReadResp_ReadEvent_RecordedEvent{CustomMetadata: []byte("meta"), Data: []byte("data")},
	}}}
	b, _ := proto.Marshal(m)
	var got persistent.ReadResp
	if err := (Codec{}).Unmarshal(split(b), &got); err != nil {
		t.Fatal(err)
	}
	ev := got.GetEvent().GetEvent()
	_ = append(ev.CustomMetadata, "XXXX"...)
	if string(ev.Data) != "data" {
		t.Fatalf("appending to custom metadata changed data to %q", ev.Data)
	}
}

// FuzzUnmarshal: for any bytes, the codec accepts exactly what protobuf
// accepts and decodes it to an equal message.
func FuzzUnmarshal(f *testing.F) {
	r := rand.New(rand.NewPCG(7, 8))
	for range 20 {
		b, _ := proto.Marshal(randomReadResp(r))
		f.Add(b, true)
		b, _ = proto.Marshal(randomAppendReq(r))
		f.Add(b, false)
	}
	f.Fuzz(func(t *testing.T, b []byte, read bool) {
		var fast, std proto.Message = &streams.AppendReq{}, &streams.AppendReq{}
		if read {
			fast, std = &persistent.ReadResp{}, &persistent.ReadResp{}
		}
		errFast := Codec{}.Unmarshal(split(b), fast)
		errStd := proto.Unmarshal(b, std)
		if (errFast == nil) != (errStd == nil) {
			t.Fatalf("codec error %v, protobuf error %v", errFast, errStd)
		}
		if errStd == nil && !proto.Equal(fast, std) {
			t.Fatalf("codec read %v, protobuf %v", fast, std)
		}
	})
}
