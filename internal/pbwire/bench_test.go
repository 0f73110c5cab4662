package pbwire

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
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

// protoCodec is grpc's default: the baseline the benchmark reports against.
type protoCodec struct{}

func (protoCodec) Marshal(v any) (mem.BufferSlice, error) { return marshalProto(v) }
func (protoCodec) Unmarshal(d mem.BufferSlice, v any) error {
	return unmarshalProto(d, v)
}

type codec interface {
	Marshal(any) (mem.BufferSlice, error)
	Unmarshal(mem.BufferSlice, any) error
}

// BenchmarkCodec times encoding and decoding the hot messages with the
// protobuf runtime and with this package, alternating one operation of each
// so both see the same machine, and reports protobuf's time over pbwire's as
// speedup-x.
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
		wire, _ := proto.Marshal(m)
		ops := map[string]func(codec) error{
			"Marshal": func(c codec) error {
				out, err := c.Marshal(m)
				out.Free()
				return err
			},
			"Unmarshal": func(c codec) error {
				return c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, m.ProtoReflect().New().Interface())
			},
		}
		for _, op := range []string{"Marshal", "Unmarshal"} {
			if name == "BatchAppendResp" && op == "Unmarshal" {
				continue // ditto reads answers with BatchAppendSuccess, not the codec
			}
			b.Run(name+"/"+op, func(b *testing.B) {
				var took [2]time.Duration
				for b.Loop() {
					for i, c := range []codec{protoCodec{}, Codec{}} {
						t := time.Now()
						if err := ops[op](c); err != nil {
							b.Fatal(err)
						}
						took[i] += time.Since(t)
					}
				}
				b.ReportMetric(float64(took[0].Nanoseconds())/float64(b.N), "protobuf-ns/op")
				b.ReportMetric(float64(took[1].Nanoseconds())/float64(b.N), "pbwire-ns/op")
				b.ReportMetric(float64(took[0])/float64(took[1]), "speedup-x")
			})
		}
	}
}

// BenchmarkDecodeRead times decoding a delivery into the client's event
// types: the codec's decode into persistent.ReadResp followed by the
// client's conversion, against DecodeRead, alternating as BenchmarkCodec
// does.
//
//	go test -run XXX -bench DecodeRead ./internal/pbwire
func BenchmarkDecodeRead(b *testing.B) {
	wire, _ := proto.Marshal(typicalReadResp())
	var took [2]time.Duration
	for b.Loop() {
		t := time.Now()
		var resp persistent.ReadResp
		if err := (Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, &resp); err != nil {
			b.Fatal(err)
		}
		_ = fromReadResp(&resp)
		took[0] += time.Since(t)
		t = time.Now()
		var raw Raw
		if err := (Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, &raw); err != nil {
			b.Fatal(err)
		}
		if _, err := DecodeRead(raw); err != nil {
			b.Fatal(err)
		}
		took[1] += time.Since(t)
	}
	b.ReportMetric(float64(took[0].Nanoseconds())/float64(b.N), "message-ns/op")
	b.ReportMetric(float64(took[1].Nanoseconds())/float64(b.N), "direct-ns/op")
	b.ReportMetric(float64(took[0])/float64(took[1]), "speedup-x")
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
