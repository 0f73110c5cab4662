package pbwire

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/google/uuid"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"

	"github.com/ditto-replicator/ditto/internal/pbwire/gen/persistentpb"
	"github.com/ditto-replicator/ditto/sinks"
)

// The messages of one replicated event as they cross the wire: a delivery
// with its link resolved, and the proposed message that appends it.
func typicalRecorded(stream string, rev uint64, data []byte) *persistent.ReadResp_ReadEvent_RecordedEvent {
	return &persistent.ReadResp_ReadEvent_RecordedEvent{
		Id:               &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{MostSignificantBits: 0x1234567890abcdef, LeastSignificantBits: -0x1234567890abcdef}}},
		StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(stream)},
		StreamRevision:   rev, PreparePosition: 123456789, CommitPosition: 123456789,
		Metadata:       map[string]string{"type": "customer-registered", "content-type": "application/json", "created": "17636034000000000"},
		CustomMetadata: []byte(`{"$correlationId":"4f1c7a2e-5b7d-4c1e-9a0b-2d3e4f5a6b7c","producer":"ditto-bench"}`),
		Data:           data,
	}
}

func typicalReadResp() *persistent.ReadResp {
	return &persistent.ReadResp{Content: &persistent.ReadResp_Event{Event: &persistent.ReadResp_ReadEvent{
		Event:    typicalRecorded("customer-42", 7, []byte(`{"id":42,"name":"customer 42","email":"c42@example.com","seq":7}`)),
		Link:     typicalRecorded("$ce-customer", 70007, []byte("7@customer-42")),
		Position: &persistent.ReadResp_ReadEvent_CommitPosition{CommitPosition: 123456789},
		Count:    &persistent.ReadResp_ReadEvent_RetryCount{RetryCount: 0},
	}}}
}

func typicalAppendReq() *streams.AppendReq {
	rec := typicalRecorded("customer-42", 7, []byte(`{"id":42,"name":"customer 42","email":"c42@example.com","seq":7}`))
	return &streams.AppendReq{Content: &streams.AppendReq_ProposedMessage_{ProposedMessage: &streams.AppendReq_ProposedMessage{
		Id:             rec.Id,
		Metadata:       map[string]string{"type": "customer-registered", "content-type": "application/json"},
		CustomMetadata: rec.CustomMetadata,
		Data:           rec.Data,
	}}}
}

// typicalBatchAppendReq is a write of ten events of about 1 KB, whole in one
// request: options with a deadline, metadata on every event.
func typicalBatchAppendReq() *streams.BatchAppendReq {
	data := []byte(`{"id":42,"name":"customer 42","email":"c42@example.com","seq":7,"notes":"` + strings.Repeat("x", 900) + `"}`)
	m := &streams.BatchAppendReq{
		CorrelationId: &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{MostSignificantBits: 0x0123456789abcdef, LeastSignificantBits: 42}}},
		Options: &streams.BatchAppendReq_Options{
			StreamIdentifier:       &shared.StreamIdentifier{StreamName: []byte("customer-42")},
			ExpectedStreamPosition: &streams.BatchAppendReq_Options_StreamPosition{StreamPosition: 6},
			DeadlineOption:         &streams.BatchAppendReq_Options_Deadline{Deadline: durationpb.New(10 * time.Second)},
		},
		IsFinal: true,
	}
	for i := range 10 {
		rec := typicalRecorded("customer-42", uint64(7+i), data)
		m.ProposedMessages = append(m.ProposedMessages, &streams.BatchAppendReq_ProposedMessage{
			Id:             rec.Id,
			Metadata:       map[string]string{"type": "customer-registered", "content-type": "application/json"},
			CustomMetadata: rec.CustomMetadata,
			Data:           rec.Data,
		})
	}
	return m
}

// typicalAck acknowledges 100 deliveries, with ids as the client sends them.
func typicalAck() *persistent.ReadReq {
	ids := make([]*shared.UUID, 100)
	for i := range ids {
		ids[i] = &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
			MostSignificantBits: 0x1234567890abcdef + int64(i), LeastSignificantBits: -0x1234567890abcdef - int64(i)}}}
	}
	return &persistent.ReadReq{Content: &persistent.ReadReq_Ack_{Ack: &persistent.ReadReq_Ack{Id: []byte("$ce-customer::ditto"), Ids: ids}}}
}

// toGenerated decodes m's bytes into the generated message of its type.
func toGenerated(b *testing.B, m proto.Message) proto.Message {
	wire, _ := proto.Marshal(m)
	g := generatedFor(b, m)
	if err := g.(vtUnmarshaler).UnmarshalVTUnsafe(wire); err != nil {
		b.Fatal(err)
	}
	return g
}

// BenchmarkCodec times encoding and decoding the messages of the per-event
// path with the protobuf runtime (the client's types) and with the
// generated code (the same messages in gen/, through Codec), alternating
// one operation of each so both see the same machine, and reports
// protobuf's time over the generated code's as speedup-x.
//
//	go test -run XXX -bench Codec ./internal/pbwire
func BenchmarkCodec(b *testing.B) {
	msgs := map[string]func() proto.Message{
		"ReadResp":        func() proto.Message { return typicalReadResp() },
		"AppendReq":       func() proto.Message { return typicalAppendReq() },
		"BatchAppendReq":  func() proto.Message { return typicalBatchAppendReq() },
		"Ack":             func() proto.Message { return typicalAck() },
		"BatchAppendResp": func() proto.Message { return typicalBatchAppendResp() },
	}
	for _, name := range []string{"ReadResp", "AppendReq", "BatchAppendReq", "Ack", "BatchAppendResp"} {
		m := msgs[name]()
		g := toGenerated(b, m)
		wire, _ := proto.Marshal(m)
		ops := map[string][2]func() error{
			"Marshal": {
				func() error { out, err := marshalProto(m); out.Free(); return err },
				func() error { out, err := Codec{}.Marshal(g); out.Free(); return err },
			},
			"Unmarshal": {
				func() error {
					return unmarshalProto(mem.BufferSlice{mem.SliceBuffer(wire)}, m.ProtoReflect().New().Interface())
				},
				func() error {
					return Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, g.ProtoReflect().New().Interface())
				},
			},
		}
		for _, op := range []string{"Marshal", "Unmarshal"} {
			b.Run(name+"/"+op, func(b *testing.B) { alternate(b, "vtproto-ns/op", ops[op]) })
		}
	}
}

// BenchmarkDitto times ditto's own encoders (generated code underneath)
// against building the client's messages and encoding them with protobuf:
// an ack of 100 ids, a write of 15 events ((a)'s append size).
//
//	go test -run XXX -bench Ditto ./internal/pbwire
func BenchmarkDitto(b *testing.B) {
	ids := make([]uuid.UUID, 100)
	for i := range ids {
		ids[i] = uuid.New()
	}
	settle := &Settle{SubscriptionID: []byte("$ce-customer::ditto"), IDs: ids}
	w := typicalWrite(15)
	for name, ops := range map[string][2]func() error{
		"Settle": {
			func() error {
				pids := make([]*shared.UUID, len(ids))
				for i, id := range ids {
					pids[i] = structured(id)
				}
				out, err := marshalProto(&persistent.ReadReq{Content: &persistent.ReadReq_Ack_{Ack: &persistent.ReadReq_Ack{Id: settle.SubscriptionID, Ids: pids}}})
				out.Free()
				return err
			},
			func() error { out, err := Codec{}.Marshal(settle); out.Free(); return err },
		},
		"BatchWrite": {
			func() error { out, err := marshalProto(generated(w)); out.Free(); return err },
			func() error { out, err := Codec{}.Marshal(w); out.Free(); return err },
		},
	} {
		b.Run(name, func(b *testing.B) { alternate(b, "ditto-ns/op", ops) })
	}
}

// alternate runs protobuf's operation and the other one by turns in each
// iteration, so that both see the same machine, and reports each one's time
// (the other's under unit) and protobuf's time over the other's as
// speedup-x.
func alternate(b *testing.B, unit string, ops [2]func() error) {
	var took [2]time.Duration
	for b.Loop() {
		for i, f := range ops {
			t := time.Now()
			if err := f(); err != nil {
				b.Fatal(err)
			}
			took[i] += time.Since(t)
		}
	}
	b.ReportMetric(float64(took[0].Nanoseconds())/float64(b.N), "protobuf-ns/op")
	b.ReportMetric(float64(took[1].Nanoseconds())/float64(b.N), unit)
	b.ReportMetric(float64(took[0])/float64(took[1]), "speedup-x")
}

func typicalWrite(n int) *BatchWrite {
	data := []byte(`{"id":42,"name":"customer 42","email":"c42@example.com","seq":7}`)
	meta := []byte(`{"$correlationId":"4f1c7a2e-5b7d-4c1e-9a0b-2d3e4f5a6b7c","producer":"ditto-bench"}`)
	w := &BatchWrite{CorrelationID: uuid.New(), Options: true, Stream: "customer-42",
		Expected: esdb.StreamRevision{Value: 6}, Deadline: 10 * time.Second, Final: true}
	for range n {
		w.Events = append(w.Events, sinks.Event{ID: uuid.New(), Type: "customer-registered", ContentType: ctJSON, Metadata: meta, Data: data})
	}
	return w
}

// BenchmarkDecodeRead times decoding a delivery into the client's event
// types three ways, alternating: protobuf and the client's conversion, the
// generated decoder (into pooled messages) and the same conversion, and
// DecodeRead, by hand. It reports the first two over the third.
//
//	go test -run XXX -bench DecodeRead ./internal/pbwire
func BenchmarkDecodeRead(b *testing.B) {
	wire, _ := proto.Marshal(typicalReadResp())
	var took [3]time.Duration
	for b.Loop() {
		t := time.Now()
		var resp persistent.ReadResp
		if err := proto.Unmarshal(wire, &resp); err != nil {
			b.Fatal(err)
		}
		_ = fromReadResp(&resp)
		took[0] += time.Since(t)
		t = time.Now()
		if _, err := decodeReadGenerated(wire); err != nil {
			b.Fatal(err)
		}
		took[1] += time.Since(t)
		t = time.Now()
		if _, err := DecodeRead(wire); err != nil {
			b.Fatal(err)
		}
		took[2] += time.Since(t)
	}
	b.ReportMetric(float64(took[0].Nanoseconds())/float64(b.N), "protobuf-ns/op")
	b.ReportMetric(float64(took[1].Nanoseconds())/float64(b.N), "vtproto-ns/op")
	b.ReportMetric(float64(took[2].Nanoseconds())/float64(b.N), "hand-ns/op")
	b.ReportMetric(float64(took[0])/float64(took[2]), "protobuf/hand-x")
	b.ReportMetric(float64(took[1])/float64(took[2]), "vtproto/hand-x")
}

// decodeReadGenerated is DecodeRead done with the generated decoder, as
// fast as it goes: pooled messages, then the client's conversion. It is
// what DecodeRead is measured against (see package doc).
func decodeReadGenerated(b []byte) (ReadMessage, error) {
	resp := persistentpb.ReadRespFromVTPool()
	defer resp.ReturnToVTPool()
	if err := resp.UnmarshalVTUnsafe(b); err != nil {
		return ReadMessage{}, err
	}
	if c := resp.GetSubscriptionConfirmation(); c != nil {
		return ReadMessage{SubscriptionID: c.GetSubscriptionId()}, nil
	}
	e := resp.GetEvent()
	if e == nil {
		return ReadMessage{}, nil
	}
	blk := new(readBlock)
	if p, ok := e.GetPosition().(*persistentpb.ReadResp_ReadEvent_CommitPosition); ok {
		blk.commit = p.CommitPosition
		blk.ev.Commit = &blk.commit
	}
	for i, r := range [2]*persistentpb.ReadResp_ReadEvent_RecordedEvent{e.GetEvent(), e.GetLink()} {
		if r == nil {
			continue
		}
		md := r.GetMetadata()
		for k, v := range md { // protobuf's UTF-8 check, which the generated code skips
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				return ReadMessage{}, errShape
			}
		}
		blk.rec[i] = esdb.RecordedEvent{
			EventType: md[mdType], ContentType: md[mdContentType], StreamID: string(r.GetStreamIdentifier().GetStreamName()),
			EventNumber: r.GetStreamRevision(), CreatedDate: created(md[mdCreated]),
			Position: esdb.Position{Commit: r.GetCommitPosition(), Prepare: r.GetPreparePosition()},
			Data:     r.GetData(), UserMetadata: r.GetCustomMetadata(),
		}
		if s := r.GetId().GetStructured(); s != nil {
			blk.rec[i].EventID = structuredUUID(uint64(s.GetMostSignificantBits()), uint64(s.GetLeastSignificantBits()))
		} else {
			blk.rec[i].EventID = stringUUID(r.GetId().GetString_())
		}
	}
	if e.GetEvent() != nil {
		blk.ev.Event = &blk.rec[0]
	}
	if e.GetLink() != nil {
		blk.ev.Link = &blk.rec[1]
	}
	return ReadMessage{Event: &blk.ev, RetryCount: int(e.GetRetryCount())}, nil
}

// typicalBatchAppendResp is the test server's answer to a write: a success
// with the stream's revision and the commit's position.
func typicalBatchAppendResp() *streams.BatchAppendResp {
	return &streams.BatchAppendResp{
		CorrelationId:    structured(uuid.MustParse("0a1b2c3d-4e5f-4061-8273-8495a6b7c8d9")),
		StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte("customer-42")},
		Result: &streams.BatchAppendResp_Success_{Success: &streams.BatchAppendResp_Success{
			CurrentRevisionOption: &streams.BatchAppendResp_Success_CurrentRevision{CurrentRevision: 41},
			PositionOption: &streams.BatchAppendResp_Success_Position{Position: &shared.AllStreamPosition{
				CommitPosition: 123456789, PreparePosition: 123456789}},
		}},
	}
}
