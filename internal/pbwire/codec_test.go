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
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"

	"github.com/ditto-replicator/ditto/internal/pbwire/gen/persistentpb"
	"github.com/ditto-replicator/ditto/internal/pbwire/gen/streamspb"
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

// generatedFor returns an empty generated message of m's type: the same
// message under ditto's proto package.
func generatedFor(t testing.TB, m proto.Message) proto.Message {
	t.Helper()
	switch m.(type) {
	case *persistent.ReadResp:
		return &persistentpb.ReadResp{}
	case *persistent.ReadReq:
		return &persistentpb.ReadReq{}
	case *streams.AppendReq:
		return &streamspb.AppendReq{}
	case *streams.BatchAppendReq:
		return &streamspb.BatchAppendReq{}
	case *streams.BatchAppendResp:
		return &streamspb.BatchAppendResp{}
	}
	t.Fatalf("no generated message for %T", m)
	return nil
}

// TestGeneratedMatchesTheClient checks that the generated messages and the
// client's are the same on the wire, both ways: what the client's types
// write, the codec decodes into the generated type, and what the codec
// writes from that, the client's types read back as the same message.
//
// The random tests of this package (here, and those of Settle, BatchWrite
// and DecodeRead) draw a fixed sequence: half of each count already makes
// every choice of the random builders (each pick's every value, each
// branch of the generated code the test reaches), so the counts are a margin,
// not a search; the fuzz targets search.
func TestGeneratedMatchesTheClient(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var msgs []proto.Message
	for i := range 1000 {
		switch i % 5 {
		case 0:
			msgs = append(msgs, randomReadResp(r))
		case 1:
			msgs = append(msgs, randomAppendReq(r))
		case 2:
			msgs = append(msgs, randomBatchAppendReq(r))
		case 3:
			msgs = append(msgs, randomReadReq(r))
		case 4:
			msgs = append(msgs, randomBatchAppendResp(r))
		}
	}
	for range 50 { // the requests of real BatchAppend writes
		for _, m := range writerBatch(r, pick(r, 1, 2, 10, 50)) {
			msgs = append(msgs, m)
		}
	}
	for _, m := range msgs {
		want, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		g := generatedFor(t, m)
		if err := (Codec{}).Unmarshal(split(want), g); err != nil {
			t.Fatalf("codec cannot read protobuf's bytes of %v: %v", m, err)
		}
		b := marshal(t, g)
		if len(b) != len(want) {
			t.Fatalf("codec wrote %d bytes for %v, protobuf %d", len(b), m, len(want))
		}
		back := m.ProtoReflect().New().Interface()
		if err := proto.Unmarshal(b, back); err != nil {
			t.Fatalf("protobuf cannot read the codec's bytes of %v: %v", m, err)
		}
		if !proto.Equal(m, back) {
			t.Fatalf("client's message %v came back as %v", m, back)
		}
	}
}

// TestClientTypesGoThroughProtobuf: a message of the client's own types is
// encoded and decoded as grpc's proto codec would.
func TestClientTypesGoThroughProtobuf(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 100 {
		m := randomBatchAppendReq(r)
		want, _ := proto.Marshal(m)
		if b := marshal(t, m); len(b) != len(want) {
			t.Fatalf("codec wrote %d bytes, protobuf %d", len(b), len(want))
		}
		got := &streams.BatchAppendReq{}
		if err := (Codec{}).Unmarshal(split(want), got); err != nil || !proto.Equal(got, m) {
			t.Fatalf("decoded %v (%v), want %v", got, err, m)
		}
	}
	if _, err := (Codec{}).Marshal(struct{}{}); err == nil {
		t.Fatal("a value that is no message was encoded")
	}
}

// TestBrokenBytesAreAnError: the generated decoder refuses what is not a
// message, as protobuf does.
func TestBrokenBytesAreAnError(t *testing.T) {
	for _, b := range [][]byte{{0x0a, 0x05, 1}, {0xff}, {0x08}} {
		if err := (Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &streamspb.BatchAppendReq{}); err == nil {
			t.Errorf("decoded %x", b)
		}
		if err := proto.Unmarshal(b, &streams.BatchAppendReq{}); err == nil {
			t.Errorf("protobuf decoded %x", b)
		}
	}
}

// TestDecodedFieldsShareTheMessage: the generated decoder's byte fields point
// into the received message; appending to one must not overwrite the next,
// so callers that keep them clip them first (the test server does). This
// pins the generated behaviour that makes the clipping necessary.
func TestDecodedFieldsShareTheMessage(t *testing.T) {
	batch := &streams.BatchAppendReq{ProposedMessages: []*streams.BatchAppendReq_ProposedMessage{
		{CustomMetadata: []byte("meta"), Data: []byte("data")}, {CustomMetadata: []byte("next")}}}
	b, _ := proto.Marshal(batch)
	var got streamspb.BatchAppendReq
	if err := (Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &got); err != nil {
		t.Fatal(err)
	}
	p := got.ProposedMessages
	if &p[0].Data[0] != &b[bytes.Index(b, []byte("data"))] {
		t.Fatal("the decoded data does not point into the message")
	}
	if cap(p[0].Data) == len(p[0].Data) {
		t.Fatal("the generated decoder clips byte fields now; the clipping in the test server can go")
	}
}
