package pbwire

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ditto-replicator/ditto/sinks"
)

func randomID(r *rand.Rand) uuid.UUID {
	var id uuid.UUID
	binary.BigEndian.PutUint64(id[:8], pick(r, 0, 1, 1<<63, r.Uint64()))
	binary.BigEndian.PutUint64(id[8:], pick(r, 0, 1<<63-1, r.Uint64()))
	return id
}

func randomWrite(r *rand.Rand) *BatchWrite {
	w := &BatchWrite{CorrelationID: randomID(r), Options: r.IntN(2) == 0, Final: r.IntN(2) == 0}
	if w.Options {
		w.Stream = pick(r, "", "customer-42", "ünïcode-1")
		w.Expected = pick[esdb.ExpectedRevision](r, esdb.Any{}, esdb.NoStream{}, esdb.StreamExists{},
			esdb.StreamRevision{Value: 0}, esdb.StreamRevision{Value: r.Uint64()})
		w.Deadline = pick(r, 0, 10*time.Second, 1500*time.Millisecond, 7*time.Nanosecond)
	}
	for range r.IntN(6) {
		w.Events = append(w.Events, sinks.Event{
			ID:          randomID(r),
			Type:        pick(r, "", "customer-registered", "é-ключ"),
			ContentType: pick(r, "", ctJSON, ctBinary, "text/plain"),
			Metadata:    randomBytes(r),
			Data:        randomBytes(r),
		})
	}
	return w
}

// generated is w as the generated message the client's types would give.
func generated(w *BatchWrite) *streams.BatchAppendReq {
	id := func(u uuid.UUID) *shared.UUID {
		most, least := binary.BigEndian.Uint64(u[:8]), binary.BigEndian.Uint64(u[8:])
		return &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
			MostSignificantBits: int64(most), LeastSignificantBits: int64(least)}}}
	}
	m := &streams.BatchAppendReq{CorrelationId: id(w.CorrelationID), IsFinal: w.Final}
	if w.Options {
		o := &streams.BatchAppendReq_Options{
			StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(w.Stream)},
			DeadlineOption:   &streams.BatchAppendReq_Options_Deadline{Deadline: durationpb.New(w.Deadline)},
		}
		switch e := w.Expected.(type) {
		case esdb.NoStream:
			o.ExpectedStreamPosition = &streams.BatchAppendReq_Options_NoStream{NoStream: &emptypb.Empty{}}
		case esdb.StreamExists:
			o.ExpectedStreamPosition = &streams.BatchAppendReq_Options_StreamExists{StreamExists: &emptypb.Empty{}}
		case esdb.StreamRevision:
			o.ExpectedStreamPosition = &streams.BatchAppendReq_Options_StreamPosition{StreamPosition: e.Value}
		default:
			o.ExpectedStreamPosition = &streams.BatchAppendReq_Options_Any{Any: &emptypb.Empty{}}
		}
		m.Options = o
	}
	for _, e := range w.Events {
		ct := ctBinary
		if e.ContentType == ctJSON {
			ct = ctJSON
		}
		m.ProposedMessages = append(m.ProposedMessages, &streams.BatchAppendReq_ProposedMessage{
			Id: id(e.ID), Metadata: map[string]string{"type": e.Type, "content-type": ct},
			CustomMetadata: e.Metadata, Data: e.Data,
		})
	}
	return m
}

// TestBatchWriteMatchesProtobuf encodes random writes and checks that
// protobuf decodes each into the message the generated types would have
// sent, byte for byte in every field.
func TestBatchWriteMatchesProtobuf(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	for i := range 500 {
		w := randomWrite(r)
		data, err := Codec{}.Marshal(w)
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		var got streams.BatchAppendReq
		if err := proto.Unmarshal(data.Materialize(), &got); err != nil {
			t.Fatalf("write %d: protobuf cannot decode it: %v", i, err)
		}
		if want := generated(w); !proto.Equal(&got, want) {
			t.Fatalf("write %d:\n got %v\nwant %v", i, &got, want)
		}
		data.Free()
	}
}

func TestBatchWriteRefusesInvalidUTF8Type(t *testing.T) {
	w := &BatchWrite{Events: []sinks.Event{{Type: "bad\xff"}}, Final: true}
	if _, err := (Codec{}).Marshal(w); err == nil {
		t.Fatal("an event type that is not UTF-8 was encoded; protobuf refuses it")
	}
}

func structured(id uuid.UUID) *shared.UUID {
	most, least := binary.BigEndian.Uint64(id[:8]), binary.BigEndian.Uint64(id[8:])
	return &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
		MostSignificantBits: int64(most), LeastSignificantBits: int64(least)}}}
}

// TestBatchAppendSuccess checks the answers BatchAppendSuccess takes, and
// that it leaves every other answer to the caller's protobuf decoding.
func TestBatchAppendSuccess(t *testing.T) {
	id := uuid.MustParse("0a1b2c3d-4e5f-4061-8273-8495a6b7c8d9")
	success := func(rev uint64) *streams.BatchAppendResp {
		return &streams.BatchAppendResp{CorrelationId: structured(id), Result: &streams.BatchAppendResp_Success_{
			Success: &streams.BatchAppendResp_Success{CurrentRevisionOption: &streams.BatchAppendResp_Success_CurrentRevision{CurrentRevision: rev}}}}
	}
	full := success(41)
	full.GetSuccess().PositionOption = &streams.BatchAppendResp_Success_Position{Position: &shared.AllStreamPosition{CommitPosition: 9, PreparePosition: 9}}
	full.StreamIdentifier = &shared.StreamIdentifier{StreamName: []byte("customer-42")}
	full.ExpectedStreamPosition = &streams.BatchAppendResp_StreamPosition{StreamPosition: 40}
	for name, c := range map[string]struct {
		resp *streams.BatchAppendResp
		rev  uint64
	}{"revision 0": {success(0), 0}, "revision": {success(1 << 40), 1 << 40}, "every field": {full, 41}} {
		b := marshal(t, c.resp)
		gotID, rev, ok := BatchAppendSuccess(b)
		if !ok || gotID != id || rev != c.rev {
			t.Errorf("%s: got %v %d %v, want %v %d true", name, gotID, rev, ok, id, c.rev)
		}
	}

	noStream := success(0)
	noStream.GetSuccess().CurrentRevisionOption = &streams.BatchAppendResp_Success_NoStream{NoStream: &emptypb.Empty{}}
	stringID := success(3)
	stringID.CorrelationId = &shared.UUID{Value: &shared.UUID_String_{String_: id.String()}}
	noID := success(3)
	noID.CorrelationId = nil
	refused := &streams.BatchAppendResp{CorrelationId: structured(id), Result: &streams.BatchAppendResp_Error{Error: &rpcstatus.Status{Code: 3, Message: "no"}}}
	noResult := &streams.BatchAppendResp{CorrelationId: structured(id)}
	for name, b := range map[string][]byte{
		"refusal":       marshal(t, refused),
		"no stream":     marshal(t, noStream),
		"string id":     marshal(t, stringID),
		"no id":         marshal(t, noID),
		"no result":     marshal(t, noResult),
		"truncated":     marshal(t, success(3))[:10],
		"not a message": {0xff, 0xff},
	} {
		if _, _, ok := BatchAppendSuccess(b); ok {
			t.Errorf("%s: taken as a success; the caller should decode it", name)
		}
	}
}

// FuzzBatchAppendSuccess checks that whatever BatchAppendSuccess takes,
// protobuf decodes to the same success, and that no input makes it panic.
func FuzzBatchAppendSuccess(f *testing.F) {
	id := uuid.MustParse("0a1b2c3d-4e5f-4061-8273-8495a6b7c8d9")
	f.Add(marshalResp(&streams.BatchAppendResp{CorrelationId: structured(id), Result: &streams.BatchAppendResp_Success_{
		Success: &streams.BatchAppendResp_Success{CurrentRevisionOption: &streams.BatchAppendResp_Success_CurrentRevision{CurrentRevision: 7}}}}))
	f.Add(marshalResp(&streams.BatchAppendResp{CorrelationId: structured(id), Result: &streams.BatchAppendResp_Error{Error: &rpcstatus.Status{Code: 3}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		gotID, rev, ok := BatchAppendSuccess(b)
		if !ok {
			return
		}
		var m streams.BatchAppendResp
		if err := proto.Unmarshal(b, &m); err != nil {
			t.Fatalf("taken as a success, refused by protobuf: %v", err)
		}
		st := m.GetCorrelationId().GetStructured()
		want := structuredUUID(uint64(st.GetMostSignificantBits()), uint64(st.GetLeastSignificantBits()))
		cur, isRev := m.GetSuccess().GetCurrentRevisionOption().(*streams.BatchAppendResp_Success_CurrentRevision)
		if st == nil || gotID != want || !isRev || cur.CurrentRevision != rev {
			t.Fatalf("decoded %v %d; protobuf: %v", gotID, rev, &m)
		}
	})
}

func marshalResp(m *streams.BatchAppendResp) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}
