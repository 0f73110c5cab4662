package esdbtest

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/ditto-replicator/ditto/internal/pbwire"
	"github.com/ditto-replicator/ditto/internal/pbwire/gen/persistentpb"
)

// psAckMessages are ReadReqs in many shapes: acks as consumers send them,
// and every variation the fast decoder must leave to the codec.
func psAckMessages(t *testing.T) [][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	randomID := func() uuid.UUID {
		var id uuid.UUID
		for i := range id {
			id[i] = byte(r.Uint32())
		}
		return id
	}
	marshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	settle := func(s *pbwire.Settle) []byte {
		data, err := pbwire.Codec{}.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		return data.Materialize()
	}
	structured := func(most, least int64) *shared.UUID {
		return &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{MostSignificantBits: most, LeastSignificantBits: least}}}
	}
	ack := func(ids ...*shared.UUID) []byte {
		return marshal(&persistent.ReadReq{Content: &persistent.ReadReq_Ack_{Ack: &persistent.ReadReq_Ack{Id: []byte("s::g"), Ids: ids}}})
	}
	var msgs [][]byte
	for _, n := range []int{0, 1, 2, 16, 100} {
		ids := make([]uuid.UUID, n)
		for i := range ids {
			ids[i] = randomID()
		}
		msgs = append(msgs,
			settle(&pbwire.Settle{SubscriptionID: []byte("$ce-bench::g"), IDs: ids}),
			settle(&pbwire.Settle{IDs: ids}),
			settle(&pbwire.Settle{SubscriptionID: []byte("s::g"), IDs: ids, Nack: true, Action: persistent.ReadReq_Nack_Retry, Reason: "r"}),
		)
	}
	msgs = append(msgs,
		settle(&pbwire.Settle{IDs: []uuid.UUID{{}, {0: 1}, {15: 1}, {0: 0x80, 8: 0x80}}}),
		ack(structured(0, 0), structured(-1, -1), structured(1, 0), structured(0, 1)),
		ack(&shared.UUID{Value: &shared.UUID_String_{String_: randomID().String()}}),
		ack(&shared.UUID{Value: &shared.UUID_String_{String_: "not an id"}}),
		ack(&shared.UUID{}, structured(5, 6)),
		ack(structured(5, 6), &shared.UUID{Value: &shared.UUID_String_{String_: randomID().String()}}),
		marshal(&persistent.ReadReq{}),
		marshal(&persistent.ReadReq{Content: &persistent.ReadReq_Options_{Options: &persistent.ReadReq_Options{GroupName: "g", BufferSize: 5}}}),
		marshal(&persistent.ReadReq{Content: &persistent.ReadReq_Ack_{Ack: &persistent.ReadReq_Ack{}}}),
	)
	one := ack(structured(7, 8))
	field := func(num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
	}
	varint := func(num protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), v)
	}
	cat := func(bs ...[]byte) []byte { return slices.Concat(bs...) }
	msgs = append(msgs,
		cat(one, one), // two acks: protobuf merges them
		cat(one, varint(9, 1)),
		field(2, cat(field(2, field(1, cat(varint(2, 8), varint(1, 7)))))),           // halves out of order
		field(2, cat(field(2, field(1, cat(varint(1, 7), varint(1, 9)))))),           // a half twice
		field(2, cat(field(2, field(1, cat(varint(1, 7), varint(3, 9)))))),           // unknown field
		field(2, cat(field(2, cat(field(1, varint(1, 7)), field(1, varint(2, 8)))))), // structured twice
		field(2, cat(field(2, field(1, field(1, nil))))),                             // a half as bytes
		field(2, cat(varint(2, 1))),
		field(2, cat(field(3, nil), field(2, field(1, varint(1, 7))))),
		field(2, field(2, field(1, append(protowire.AppendTag(nil, 1, protowire.VarintType), 0xff, 0x80)))), // overlong, then cut
		field(2, field(2, field(1, append(protowire.AppendTag(nil, 1, protowire.VarintType), 0x80, 0x00)))), // overlong zero
		field(2, field(2, field(1, append(protowire.AppendTag(nil, 1, protowire.VarintType), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)))),
		field(2, field(2, field(1, append(protowire.AppendTag(nil, 1, protowire.VarintType), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02)))),
		one[:len(one)-1],
		[]byte{0x12, 0x05, 0x01},
		[]byte{0xff},
	)
	// Every prefix of a typical ack.
	typical := msgs[3]
	for i := range typical {
		msgs = append(msgs, typical[:i])
	}
	return msgs
}

// The server reads acks and nacks as the generated message: whatever
// protobuf decodes from the client's types, it decodes to the same ids.
func TestPSAcksFromWireMatchProtobuf(t *testing.T) {
	decoded := 0
	for i, b := range psAckMessages(t) {
		var want persistent.ReadReq
		if proto.Unmarshal(b, &want) != nil {
			continue
		}
		var got persistentpb.ReadReq
		if err := (pbwire.Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &got); err != nil {
			if hasUnknown(want.ProtoReflect()) {
				// A known field sent with another wire type, which protobuf
				// keeps as unknown and the generated decoder refuses: no
				// client sends it.
				continue
			}
			t.Fatalf("message %d %x: protobuf decodes %v, the generated decoder fails: %v", i, b, &want, err)
		}
		var ids, wantIDs []uuid.UUID
		switch x := want.GetContent().(type) {
		case *persistent.ReadReq_Ack_:
			wantIDs = psUUIDsFromProto(x.Ack.GetIds())
			ids = psUUIDsFromWire(got.GetAck().GetIds())
		case *persistent.ReadReq_Nack_:
			wantIDs = psUUIDsFromProto(x.Nack.GetIds())
			ids = psUUIDsFromWire(got.GetNack().GetIds())
			if got.GetNack().GetReason() != x.Nack.GetReason() || int32(got.GetNack().GetAction()) != int32(x.Nack.GetAction()) {
				t.Fatalf("message %d: nack %v, protobuf %v", i, &got, &want)
			}
		default:
			if got.GetAck() != nil || got.GetNack() != nil {
				t.Fatalf("message %d: %v, protobuf %v", i, &got, &want)
			}
			continue
		}
		decoded++
		if !slices.Equal(ids, wantIDs) {
			t.Fatalf("message %d %x: ids %v, protobuf %v", i, b, ids, wantIDs)
		}
	}
	if decoded < 10 {
		t.Fatalf("only %d acks and nacks decoded", decoded)
	}
}

// psUUIDFromProto decodes an ack/nack id of the client's types, the
// reference psUUIDsFromWire is checked against; ok is false for garbage.
func psUUIDFromProto(u *shared.UUID) (uuid.UUID, bool) {
	var id uuid.UUID
	switch v := u.GetValue().(type) {
	case *shared.UUID_Structured_:
		binary.BigEndian.PutUint64(id[:8], uint64(v.Structured.GetMostSignificantBits()))
		binary.BigEndian.PutUint64(id[8:], uint64(v.Structured.GetLeastSignificantBits()))
		return id, true
	case *shared.UUID_String_:
		parsed, err := uuid.Parse(v.String_)
		return parsed, err == nil
	}
	return id, false
}

func psUUIDsFromProto(us []*shared.UUID) []uuid.UUID {
	ids := make([]uuid.UUID, 0, len(us))
	for _, u := range us {
		if id, ok := psUUIDFromProto(u); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

// hasUnknown reports whether m or any message in it holds unknown fields.
func hasUnknown(m protoreflect.Message) bool {
	if len(m.GetUnknown()) > 0 {
		return true
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := range v.List().Len() {
				found = found || hasUnknown(v.List().Get(i).Message())
			}
		case fd.Message() != nil && !fd.IsMap():
			found = hasUnknown(v.Message())
		}
		return !found
	})
	return found
}

// A message the codec cannot decode ends the read with the status grpc
// gives such a message.
func TestPSGRPCUndecodableSettleEndsRead(t *testing.T) {
	srv, c := psClient(t)
	psAppend(t, c, "bad", 3)
	ctx := context.Background()
	if st := srv.ps.create(&psSettings{Stream: "bad", Group: "g", Strategy: strategyRoundRobin,
		MaxRetryCount: 10, MaxCheckpointCount: 1000, LiveBufferSize: 500, ReadBatchSize: 20, HistoryBufferSize: 500,
		MessageTimeoutMs: 30_000}, "admin"); st.err != nil {
		t.Fatal(st.err)
	}
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, b := range [][]byte{{0x12, 0x05, 0x01}, {0xff}} {
		ctx, cancel := context.WithCancel(ctx)
		stream, err := conn.NewStream(ctx, &grpc.StreamDesc{StreamName: "Read", ServerStreams: true, ClientStreams: true},
			"/event_store.client.persistent_subscriptions.PersistentSubscriptions/Read", grpc.ForceCodecV2(pbwire.Codec{}))
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.SendMsg(&persistent.ReadReq{Content: &persistent.ReadReq_Options_{Options: &persistent.ReadReq_Options{
			StreamOption: &persistent.ReadReq_Options_StreamIdentifier{StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte("bad")}},
			GroupName:    "g", BufferSize: 1,
			UuidOption: &persistent.ReadReq_Options_UUIDOption{Content: &persistent.ReadReq_Options_UUIDOption_Structured{Structured: &shared.Empty{}}},
		}}}); err != nil {
			t.Fatal(err)
		}
		raw := pbwire.Raw(b)
		if err := stream.SendMsg(&raw); err != nil {
			t.Fatal(err)
		}
		var werr error
		for werr == nil {
			var m pbwire.Raw
			werr = stream.RecvMsg(&m)
		}
		var req persistentpb.ReadReq // what the server decodes acks into
		uerr := (pbwire.Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &req)
		want := status.Errorf(codes.Internal, "grpc: failed to unmarshal the received message: %v", uerr)
		if uerr == nil || status.Code(werr) != codes.Internal || status.Convert(werr).Message() != status.Convert(want).Message() {
			t.Fatalf("%x: read ended with %v, want %v", b, werr, want)
		}
		cancel()
	}
}
