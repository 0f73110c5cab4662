package pbwire

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

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
		m[pick(r, "type", "content-type", "created", "", "é-ключ", strings.Repeat("k", 130))] = pick(r, "", "application/json", "customer-registered", "638700000000000000", "ünïcode", strings.Repeat("v", 200))
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

func randomBatchOptions(r *rand.Rand) *streams.BatchAppendReq_Options {
	o := &streams.BatchAppendReq_Options{}
	if r.IntN(5) > 0 {
		// stream_name is bytes: protobuf takes invalid UTF-8 there.
		o.StreamIdentifier = &shared.StreamIdentifier{StreamName: []byte(pick(r, "", "customer-42", "$ce-customer", "\xff\xfe"))}
	}
	switch r.IntN(5) {
	case 1:
		o.ExpectedStreamPosition = &streams.BatchAppendReq_Options_StreamPosition{StreamPosition: pick(r, 0, 1, math.MaxUint64, r.Uint64())}
	case 2:
		o.ExpectedStreamPosition = &streams.BatchAppendReq_Options_NoStream{NoStream: &emptypb.Empty{}}
	case 3:
		o.ExpectedStreamPosition = &streams.BatchAppendReq_Options_Any{Any: &emptypb.Empty{}}
	case 4:
		o.ExpectedStreamPosition = &streams.BatchAppendReq_Options_StreamExists{StreamExists: &emptypb.Empty{}}
	}
	s, n := pick(r, 0, 1, -1, math.MaxInt64, math.MinInt64, int64(r.Uint64())), pick(r, 0, 1, -1, 999999999, math.MinInt32, int32(r.Uint32()))
	switch r.IntN(3) {
	case 1:
		o.DeadlineOption = &streams.BatchAppendReq_Options_Deadline_21_10_0{Deadline_21_10_0: &timestamppb.Timestamp{Seconds: s, Nanos: n}}
	case 2:
		o.DeadlineOption = &streams.BatchAppendReq_Options_Deadline{Deadline: &durationpb.Duration{Seconds: s, Nanos: n}}
	}
	return o
}

func randomBatchProposed(r *rand.Rand) *streams.BatchAppendReq_ProposedMessage {
	return &streams.BatchAppendReq_ProposedMessage{
		Id:             randomUUID(r),
		Metadata:       randomMap(r),
		CustomMetadata: randomBytes(r),
		Data:           randomBytes(r),
	}
}

// randomBatchAppendReq returns any shape of BatchAppendReq the codec
// handles, with more proposed messages at times than the writer sizes
// inline.
func randomBatchAppendReq(r *rand.Rand) *streams.BatchAppendReq {
	m := &streams.BatchAppendReq{CorrelationId: randomUUID(r), IsFinal: r.IntN(2) == 0}
	if r.IntN(3) > 0 {
		m.Options = randomBatchOptions(r)
	}
	for range pick(r, 0, 1, 2, 10, 40) {
		m.ProposedMessages = append(m.ProposedMessages, randomBatchProposed(r))
	}
	return m
}

// randomBatchAppendResp returns any shape of success the codec encodes
// and, at times, a refusal or an expected position, which it leaves to
// protobuf.
func randomBatchAppendResp(r *rand.Rand) *streams.BatchAppendResp {
	ok := &streams.BatchAppendResp_Success{}
	switch r.IntN(3) {
	case 1:
		ok.CurrentRevisionOption = &streams.BatchAppendResp_Success_CurrentRevision{CurrentRevision: pick(r, 0, 1, 1<<40, r.Uint64())}
	case 2:
		ok.CurrentRevisionOption = &streams.BatchAppendResp_Success_NoStream{NoStream: &emptypb.Empty{}}
	}
	switch r.IntN(3) {
	case 1:
		ok.PositionOption = &streams.BatchAppendResp_Success_Position{Position: &shared.AllStreamPosition{
			CommitPosition: pick(r, 0, 7, r.Uint64()), PreparePosition: pick(r, 0, 7, r.Uint64())}}
	case 2:
		ok.PositionOption = &streams.BatchAppendResp_Success_NoPosition{NoPosition: &emptypb.Empty{}}
	}
	m := &streams.BatchAppendResp{CorrelationId: randomUUID(r), Result: &streams.BatchAppendResp_Success_{Success: ok}}
	if r.IntN(4) > 0 {
		m.StreamIdentifier = &shared.StreamIdentifier{StreamName: randomBytes(r)}
	}
	switch r.IntN(8) {
	case 0:
		m.Result = &streams.BatchAppendResp_Error{Error: &rpcstatus.Status{Code: 9, Message: "WrongExpectedVersion"}}
	case 1:
		m.ExpectedStreamPosition = &streams.BatchAppendResp_StreamPosition{StreamPosition: 4}
	}
	return m
}

// writerBatch splits n events into requests as a BatchAppend writer does:
// one correlation id, the options in the first request only, is_final in the
// last only, and perhaps an empty final request.
func writerBatch(r *rand.Rand, n int) []*streams.BatchAppendReq {
	cid := &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
		MostSignificantBits: int64(r.Uint64()), LeastSignificantBits: int64(r.Uint64())}}}
	opts := randomBatchOptions(r)
	cur := &streams.BatchAppendReq{CorrelationId: cid, Options: opts}
	var reqs []*streams.BatchAppendReq
	for range n {
		if len(cur.ProposedMessages) > 0 && r.IntN(4) == 0 {
			reqs = append(reqs, cur)
			cur = &streams.BatchAppendReq{CorrelationId: cid}
		}
		cur.ProposedMessages = append(cur.ProposedMessages, &streams.BatchAppendReq_ProposedMessage{
			Id:             &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{MostSignificantBits: int64(r.Uint64()), LeastSignificantBits: int64(r.Uint64())}}},
			Metadata:       map[string]string{"type": "customer-registered", "content-type": pick(r, "application/json", "application/octet-stream")},
			CustomMetadata: randomBytes(r),
			Data:           randomBytes(r),
		})
	}
	if r.IntN(4) == 0 {
		reqs = append(reqs, cur)
		cur = &streams.BatchAppendReq{CorrelationId: cid}
	}
	cur.IsFinal = true
	return append(reqs, cur)
}

// randomIDs returns a list of ids, at times hundreds long, in the shapes
// list elements take (a nil element is written by protobuf as an empty one).
func randomIDs(r *rand.Rand) []*shared.UUID {
	ids := make([]*shared.UUID, pick(r, 0, 1, 3, 100, 500))
	for i := range ids {
		if ids[i] = randomUUID(r); ids[i] == nil {
			ids[i] = &shared.UUID{}
		}
	}
	return ids
}

// randomReadReq returns an ack or a nack.
func randomReadReq(r *rand.Rand) *persistent.ReadReq {
	id := []byte(pick(r, "", "customer-42::ditto", "$all::group"))
	if r.IntN(2) == 0 {
		return &persistent.ReadReq{Content: &persistent.ReadReq_Ack_{Ack: &persistent.ReadReq_Ack{Id: id, Ids: randomIDs(r)}}}
	}
	return &persistent.ReadReq{Content: &persistent.ReadReq_Nack_{Nack: &persistent.ReadReq_Nack{
		Id:     id,
		Ids:    randomIDs(r),
		Action: pick[persistent.ReadReq_Nack_Action](r, 0, 1, 2, 3, 4, -1, 99),
		Reason: pick(r, "", "handler failed", "ünïcode"),
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
	for i := range 5000 {
		var m proto.Message
		switch i % 5 {
		case 4:
			m = randomBatchAppendResp(r)
		case 0:
			m = randomReadResp(r)
		case 1:
			m = randomAppendReq(r)
		case 2:
			m = randomBatchAppendReq(r)
		case 3:
			m = randomReadReq(r)
		}
		roundTrip(t, m)
	}
	// The requests of real BatchAppend writes.
	for range 200 {
		for _, m := range writerBatch(r, pick(r, 1, 2, 10, 50)) {
			roundTrip(t, m)
		}
	}
}

func roundTrip(t *testing.T, m proto.Message) {
	t.Helper()
	fast, std := m.ProtoReflect().New().Interface(), m.ProtoReflect().New().Interface()
	{
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
// shapes ditto and the test server exchange are decoded (and, for the
// batch appends and acks, sized to protobuf's size) by hand, not handed back
// to protobuf.
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
		ba := randomBatchAppendReq(r)
		var w writer
		if !w.batchAppendReqSize(ba) || w.total != proto.Size(ba) {
			t.Fatalf("batchAppendReqSize(%v): %d bytes, protobuf %d", ba, w.total, proto.Size(ba))
		}
		b, _ = proto.Marshal(ba)
		if err := decodeBatchAppendReq(b, &streams.BatchAppendReq{}); err != nil {
			t.Fatalf("decodeBatchAppendReq(%v): %v", ba, err)
		}
		resp := randomBatchAppendResp(r)
		w = writer{}
		if _, ok := resp.Result.(*streams.BatchAppendResp_Success_); ok && resp.ExpectedStreamPosition == nil &&
			(!w.batchAppendRespSize(resp) || w.total != proto.Size(resp)) {
			t.Fatalf("batchAppendRespSize(%v): %d bytes, protobuf %d", resp, w.total, proto.Size(resp))
		}
		rq := randomReadReq(r)
		w = writer{}
		if !w.readReqSize(rq) || w.total != proto.Size(rq) {
			t.Fatalf("readReqSize(%v): %d bytes, protobuf %d", rq, w.total, proto.Size(rq))
		}
		b, _ = proto.Marshal(rq)
		if err := decodeReadReq(b, &persistent.ReadReq{}); err != nil {
			t.Fatalf("decodeReadReq(%v): %v", rq, err)
		}
	}
	for _, m := range writerBatch(r, 30) {
		b, _ := proto.Marshal(m)
		if err := decodeBatchAppendReq(b, &streams.BatchAppendReq{}); err != nil {
			t.Fatalf("decodeBatchAppendReq(%v): %v", m, err)
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
		"read options": &persistent.ReadReq{Content: &persistent.ReadReq_Options_{Options: &persistent.ReadReq_Options{
			StreamOption: &persistent.ReadReq_Options_StreamIdentifier{StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte("customer-1")}},
			GroupName:    "ditto", BufferSize: 10}}},
		"empty read request":  &persistent.ReadReq{},
		"empty read response": &persistent.ReadResp{},
		"batch unknown field": withUnknownField(&streams.BatchAppendReq{
			CorrelationId:    &shared.UUID{Value: &shared.UUID_String_{String_: "c"}},
			Options:          &streams.BatchAppendReq_Options{StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte("s")}},
			ProposedMessages: []*streams.BatchAppendReq_ProposedMessage{{Metadata: map[string]string{"type": "t"}, Data: []byte("d")}},
			IsFinal:          true}),
		"batch options unknown": &streams.BatchAppendReq{Options: withUnknownField(&streams.BatchAppendReq_Options{})},
		"batch proposed unknown": &streams.BatchAppendReq{ProposedMessages: []*streams.BatchAppendReq_ProposedMessage{
			{Data: []byte("a")}, withUnknownField(&streams.BatchAppendReq_ProposedMessage{Data: []byte("b")})}},
		"batch empty unknown": &streams.BatchAppendReq{Options: &streams.BatchAppendReq_Options{
			ExpectedStreamPosition: &streams.BatchAppendReq_Options_Any{Any: withUnknownField(&emptypb.Empty{})}}},
		"batch no stream unknown": &streams.BatchAppendReq{Options: &streams.BatchAppendReq_Options{
			ExpectedStreamPosition: &streams.BatchAppendReq_Options_NoStream{NoStream: withUnknownField(&emptypb.Empty{})}}},
		"batch stream exists unknown": &streams.BatchAppendReq{Options: &streams.BatchAppendReq_Options{
			ExpectedStreamPosition: &streams.BatchAppendReq_Options_StreamExists{StreamExists: withUnknownField(&emptypb.Empty{})}}},
		"batch timestamp unknown": &streams.BatchAppendReq{Options: &streams.BatchAppendReq_Options{
			DeadlineOption: &streams.BatchAppendReq_Options_Deadline_21_10_0{Deadline_21_10_0: withUnknownField(&timestamppb.Timestamp{Nanos: 5})}}},
		"batch correlation unknown": &streams.BatchAppendReq{CorrelationId: withUnknownField(&shared.UUID{})},
		"batch deadline unknown": &streams.BatchAppendReq{Options: &streams.BatchAppendReq_Options{
			DeadlineOption: &streams.BatchAppendReq_Options_Deadline{Deadline: withUnknownField(&durationpb.Duration{Seconds: 5})}}},
		"batch stream unknown": &streams.BatchAppendReq{Options: &streams.BatchAppendReq_Options{
			StreamIdentifier: withUnknownField(&shared.StreamIdentifier{StreamName: []byte("s")})}},
		"ack unknown": &persistent.ReadReq{Content: &persistent.ReadReq_Ack_{Ack: withUnknownField(&persistent.ReadReq_Ack{Id: []byte("sub-1")})}},
		"ack id unknown": &persistent.ReadReq{Content: &persistent.ReadReq_Ack_{Ack: &persistent.ReadReq_Ack{
			Ids: []*shared.UUID{{}, withUnknownField(&shared.UUID{})}}}},
		"nack unknown": &persistent.ReadReq{Content: &persistent.ReadReq_Nack_{Nack: withUnknownField(&persistent.ReadReq_Nack{Reason: "r"})}},
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

	// Shapes the codec cannot write, which protobuf writes anyway: nil list
	// elements (written as empty messages) and nil oneof wrappers (unset).
	for name, m := range map[string]proto.Message{
		"nil proposed message": &streams.BatchAppendReq{ProposedMessages: []*streams.BatchAppendReq_ProposedMessage{{}, nil}},
		"nil ack id":           &persistent.ReadReq{Content: &persistent.ReadReq_Ack_{Ack: &persistent.ReadReq_Ack{Ids: []*shared.UUID{nil}}}},
		"nil position": &streams.BatchAppendReq{Options: &streams.BatchAppendReq_Options{
			ExpectedStreamPosition: (*streams.BatchAppendReq_Options_StreamPosition)(nil)}},
		"nil empty": &streams.BatchAppendReq{Options: &streams.BatchAppendReq_Options{
			ExpectedStreamPosition: &streams.BatchAppendReq_Options_NoStream{}}},
		"nil duration": &streams.BatchAppendReq{Options: &streams.BatchAppendReq_Options{
			DeadlineOption: &streams.BatchAppendReq_Options_Deadline{}}},
		"nil ack": &persistent.ReadReq{Content: &persistent.ReadReq_Ack_{}},
	} {
		b := marshal(t, m)
		want, err := proto.Marshal(m)
		if err != nil || !bytes.Equal(b, want) {
			t.Fatalf("%s: codec wrote %x, protobuf %x (%v)", name, b, want, err)
		}
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

func withUnknownField[M proto.Message](m M) M {
	m.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 7))
	return m
}

// lenField is field num holding the concatenation of parts.
func lenField(num protowire.Number, parts ...[]byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), bytes.Join(parts, nil))
}

// TestInvalidUTF8 checks that the codec refuses invalid UTF-8 in the string
// fields of the new messages, both ways, as protobuf does, and takes it in
// the stream name, a bytes field, as protobuf does too.
func TestInvalidUTF8(t *testing.T) {
	bad := []byte("\xff")
	refused := map[string]struct {
		m    proto.Message
		wire []byte // the same, as a writer that does not check UTF-8 sends it
	}{
		"batch metadata key": {
			&streams.BatchAppendReq{ProposedMessages: []*streams.BatchAppendReq_ProposedMessage{
				{Metadata: map[string]string{"type": "a"}}, {Metadata: map[string]string{"\xc3": "a"}}}},
			append(lenField(fBatchProposed), lenField(fBatchProposed, lenField(fPropMetadata, lenField(fMapKey, []byte("\xc3")), lenField(fMapValue, []byte("a"))))...),
		},
		"batch metadata value": {
			&streams.BatchAppendReq{IsFinal: true, ProposedMessages: []*streams.BatchAppendReq_ProposedMessage{
				{Metadata: map[string]string{"type": "\xff"}}}},
			lenField(fBatchProposed, lenField(fPropMetadata, lenField(fMapKey, []byte("type")), lenField(fMapValue, bad))),
		},
		"batch string id": {
			&streams.BatchAppendReq{ProposedMessages: []*streams.BatchAppendReq_ProposedMessage{
				{Id: &shared.UUID{Value: &shared.UUID_String_{String_: "\xff"}}}}},
			lenField(fBatchProposed, lenField(fPropID, lenField(fUUIDString, bad))),
		},
		"batch correlation id": {
			&streams.BatchAppendReq{CorrelationId: &shared.UUID{Value: &shared.UUID_String_{String_: "\xff"}}},
			lenField(fBatchCorrelation, lenField(fUUIDString, bad)),
		},
		"ack string id": {
			&persistent.ReadReq{Content: &persistent.ReadReq_Ack_{Ack: &persistent.ReadReq_Ack{
				Ids: []*shared.UUID{{}, {Value: &shared.UUID_String_{String_: "ok-\xff"}}}}}},
			lenField(fReadReqAck, lenField(fAckIDs), lenField(fAckIDs, lenField(fUUIDString, []byte("ok-\xff")))),
		},
		"nack reason": {
			&persistent.ReadReq{Content: &persistent.ReadReq_Nack_{Nack: &persistent.ReadReq_Nack{Reason: "\xffreason"}}},
			lenField(fReadReqNack, lenField(fNackReason, []byte("\xffreason"))),
		},
	}
	for name, c := range refused {
		t.Run(name, func(t *testing.T) {
			if _, err := proto.Marshal(c.m); err == nil {
				t.Fatal("protobuf wrote it: not a refused shape")
			}
			if _, err := (Codec{}).Marshal(c.m); err == nil {
				t.Fatal("codec wrote it; protobuf refuses it")
			}
			if err := proto.Unmarshal(c.wire, c.m.ProtoReflect().New().Interface()); err == nil {
				t.Fatal("protobuf read it: not a refused shape")
			}
			if err := (Codec{}).Unmarshal(split(c.wire), c.m.ProtoReflect().New().Interface()); err == nil {
				t.Fatal("codec read it; protobuf refuses it")
			}
		})
	}

	roundTrip(t, &streams.BatchAppendReq{Options: &streams.BatchAppendReq_Options{
		StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte("\xff\xfe-stream")}}})
}

// TestRepeatedFieldsOnTheWire covers wire shapes no encoder of these
// messages writes but protobuf reads: a oneof set twice (the last case wins,
// decoded by hand) and a sub-message sent twice (merged by protobuf, left to
// it). Either way the codec must read what protobuf reads.
func TestRepeatedFieldsOnTheWire(t *testing.T) {
	wire := func(ms ...proto.Message) []byte {
		var b []byte
		for _, m := range ms {
			mb, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			b = append(b, mb...)
		}
		return b
	}
	opts := func(o *streams.BatchAppendReq_Options) *streams.BatchAppendReq {
		return &streams.BatchAppendReq{Options: o}
	}
	dur := func(s int64, n int32) *streams.BatchAppendReq_Options {
		return &streams.BatchAppendReq_Options{DeadlineOption: &streams.BatchAppendReq_Options_Deadline{Deadline: &durationpb.Duration{Seconds: s, Nanos: n}}}
	}
	ts := func(s int64, n int32) *streams.BatchAppendReq_Options {
		return &streams.BatchAppendReq_Options{DeadlineOption: &streams.BatchAppendReq_Options_Deadline_21_10_0{Deadline_21_10_0: &timestamppb.Timestamp{Seconds: s, Nanos: n}}}
	}
	pos := func(p uint64) *streams.BatchAppendReq_Options {
		return &streams.BatchAppendReq_Options{ExpectedStreamPosition: &streams.BatchAppendReq_Options_StreamPosition{StreamPosition: p}}
	}
	noStream := &streams.BatchAppendReq_Options{ExpectedStreamPosition: &streams.BatchAppendReq_Options_NoStream{NoStream: &emptypb.Empty{}}}
	anyPos := &streams.BatchAppendReq_Options{ExpectedStreamPosition: &streams.BatchAppendReq_Options_Any{Any: &emptypb.Empty{}}}
	stream := func(s string) *streams.BatchAppendReq_Options {
		return &streams.BatchAppendReq_Options{StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(s)}}
	}
	structured := func(hi, lo int64) *shared.UUID {
		return &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{MostSignificantBits: hi, LeastSignificantBits: lo}}}
	}
	ack := func(id string, ids ...*shared.UUID) *persistent.ReadReq {
		return &persistent.ReadReq{Content: &persistent.ReadReq_Ack_{Ack: &persistent.ReadReq_Ack{Id: []byte(id), Ids: ids}}}
	}
	nack := func(reason string, action persistent.ReadReq_Nack_Action, ids ...*shared.UUID) *persistent.ReadReq {
		return &persistent.ReadReq{Content: &persistent.ReadReq_Nack_{Nack: &persistent.ReadReq_Nack{Reason: reason, Action: action, Ids: ids}}}
	}
	// The options sit in one message for the last-wins cases: within it the
	// oneof fields follow each other.
	optsWire := func(fs ...[]byte) []byte { return lenField(fBatchOptions, fs...) }
	optsOf := func(m proto.Message) []byte {
		b, _ := proto.Marshal(m)
		return b
	}
	cases := []struct {
		name string
		b    []byte
		new  func() proto.Message
		hand bool // decoded by hand
	}{
		{"empty position cases, the last unknown", optsWire(optsOf(anyPos), optsOf(noStream), lenField(fOptStreamExists, []byte{8, 1})), newBatch, false},
		{"no stream unknown", optsWire(lenField(fOptNoStream, []byte{8, 1})), newBatch, false},
		{"any unknown", optsWire(lenField(fOptAny, []byte{8, 1})), newBatch, false},
		{"position then no stream", optsWire(optsOf(pos(5)), optsOf(noStream)), newBatch, true},
		{"no stream then position 0", optsWire(optsOf(noStream), optsOf(pos(0))), newBatch, true},
		{"no stream twice then any", optsWire(optsOf(noStream), optsOf(noStream), optsOf(anyPos)), newBatch, true},
		{"position twice", optsWire(optsOf(pos(5)), optsOf(pos(7))), newBatch, true},
		{"duration then timestamp", optsWire(optsOf(dur(5, 1)), optsOf(ts(6, 2))), newBatch, true},
		{"duration twice", optsWire(optsOf(dur(5, 0)), optsOf(dur(0, 3))), newBatch, false},
		{"timestamp twice", optsWire(optsOf(ts(5, 0)), optsOf(ts(0, 3))), newBatch, false},
		{"timestamp, duration, timestamp", optsWire(optsOf(ts(5, 0)), optsOf(dur(6, 0)), optsOf(ts(0, 3))), newBatch, false},
		{"duration, timestamp, duration", optsWire(optsOf(dur(5, 0)), optsOf(ts(6, 0)), optsOf(dur(0, 3))), newBatch, false},
		{"stream twice", optsWire(optsOf(stream("a")), optsOf(stream("b"))), newBatch, false},
		{"options twice", wire(opts(stream("a")), opts(pos(3))), newBatch, false},
		{"correlation id twice", wire(&streams.BatchAppendReq{CorrelationId: structured(1, 0)}, &streams.BatchAppendReq{CorrelationId: structured(0, 2)}), newBatch, false},
		{"is_final twice", wire(&streams.BatchAppendReq{IsFinal: true}, &streams.BatchAppendReq{IsFinal: true}), newBatch, true},
		{"is_final 2", protowire.AppendVarint(protowire.AppendTag(nil, fBatchIsFinal, protowire.VarintType), 2), newBatch, true},
		{"proposed messages interleaved", wire(
			&streams.BatchAppendReq{ProposedMessages: []*streams.BatchAppendReq_ProposedMessage{{Data: []byte("1")}}},
			&streams.BatchAppendReq{Options: stream("s"), IsFinal: true},
			&streams.BatchAppendReq{ProposedMessages: []*streams.BatchAppendReq_ProposedMessage{{Data: []byte("2")}, {}}},
		), newBatch, true},
		{"proposed id twice", lenField(fBatchProposed, lenField(fPropID, optsOf(structured(1, 0).GetStructured())), lenField(fPropID)), newBatch, false},
		{"ack twice", wire(ack("a", structured(1, 2)), ack("b", structured(3, 4))), newReadReq, false},
		{"ack then nack", wire(ack("a", structured(1, 2)), nack("r", 2, structured(3, 4))), newReadReq, false},
		{"nack then ack", wire(nack("r", 2, structured(3, 4)), ack("a", structured(1, 2))), newReadReq, false},
		{"ack id twice", lenField(fReadReqAck, lenField(fAckID, []byte("a")), lenField(fAckIDs), lenField(fAckID, []byte("b"))), newReadReq, true},
		{"nack action twice", lenField(fReadReqNack, protowire.AppendVarint(protowire.AppendTag(nil, fNackAction, protowire.VarintType), 1),
			protowire.AppendVarint(protowire.AppendTag(nil, fNackAction, protowire.VarintType), math.MaxUint64)), newReadReq, true},
		{"ack id structured then string", lenField(fReadReqAck, lenField(fAckIDs, lenField(fUUIDStructured), lenField(fUUIDString, []byte("s")))), newReadReq, true},
		{"ack id string then structured", lenField(fReadReqAck, lenField(fAckIDs, lenField(fUUIDString, []byte("s")), lenField(fUUIDStructured))), newReadReq, false},
		{"nack reason on an ack", lenField(fReadReqAck, lenField(fNackReason, []byte("r"))), newReadReq, false},
		{"nack action on an ack", lenField(fReadReqAck, protowire.AppendVarint(protowire.AppendTag(nil, fNackAction, protowire.VarintType), 1)), newReadReq, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			std, fast := c.new(), c.new()
			if err := proto.Unmarshal(c.b, std); err != nil {
				t.Fatal(err)
			}
			if err := (Codec{}).Unmarshal(split(c.b), fast); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(std, fast) {
				t.Fatalf("codec read %v, protobuf %v", fast, std)
			}
			var err error
			switch m := c.new().(type) {
			case *streams.BatchAppendReq:
				err = decodeBatchAppendReq(c.b, m)
			case *persistent.ReadReq:
				err = decodeReadReq(c.b, m)
			}
			if (err == nil) != c.hand {
				t.Fatalf("hand decoder: %v, want it to decode by hand: %v", err, c.hand)
			}
		})
	}
}

func newBatch() proto.Message   { return &streams.BatchAppendReq{} }
func newReadReq() proto.Message { return &persistent.ReadReq{} }

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

	batch := &streams.BatchAppendReq{ProposedMessages: []*streams.BatchAppendReq_ProposedMessage{
		{CustomMetadata: []byte("meta"), Data: []byte("data")}, {CustomMetadata: []byte("next")}}}
	b, _ = proto.Marshal(batch)
	var gotBatch streams.BatchAppendReq
	if err := (Codec{}).Unmarshal(split(b), &gotBatch); err != nil {
		t.Fatal(err)
	}
	p := gotBatch.ProposedMessages
	_ = append(p[0].CustomMetadata, "XXXX"...)
	_ = append(p[0].Data, "XXXX"...)
	if string(p[0].Data) != "data" || string(p[1].CustomMetadata) != "next" {
		t.Fatalf("appending to fields changed the next ones to %q, %q", p[0].Data, p[1].CustomMetadata)
	}
}

// FuzzUnmarshal: for any bytes, the codec accepts exactly what protobuf
// accepts and decodes it to an equal message, for each message it decodes by
// hand (chosen by kind).
func FuzzUnmarshal(f *testing.F) {
	r := rand.New(rand.NewPCG(7, 8))
	add := func(kind byte, m proto.Message) {
		b, _ := proto.Marshal(m)
		f.Add(b, kind)
	}
	for range 20 {
		add(0, randomReadResp(r))
		add(1, randomAppendReq(r))
		add(2, randomBatchAppendReq(r))
		add(3, randomReadReq(r))
	}
	for _, m := range writerBatch(r, 8) {
		add(2, m)
	}
	// Shapes the protobuf runtime merges.
	f.Add(lenField(fBatchOptions, lenField(fOptDeadline, []byte{8, 5}), lenField(fOptDeadline, []byte{16, 3})), byte(2))
	f.Add(lenField(fReadReqAck, lenField(fAckIDs, lenField(fUUIDString, []byte("s")), lenField(fUUIDStructured))), byte(3))
	f.Fuzz(func(t *testing.T, b []byte, kind byte) {
		var fast, std proto.Message
		switch kind % 4 {
		case 0:
			fast, std = &persistent.ReadResp{}, &persistent.ReadResp{}
		case 1:
			fast, std = &streams.AppendReq{}, &streams.AppendReq{}
		case 2:
			fast, std = &streams.BatchAppendReq{}, &streams.BatchAppendReq{}
		case 3:
			fast, std = &persistent.ReadReq{}, &persistent.ReadReq{}
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
