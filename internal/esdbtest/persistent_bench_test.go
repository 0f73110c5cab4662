package esdbtest

import (
	"context"
	"encoding/binary"
	"strconv"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ditto-replicator/ditto/internal/pbwire"
)

// BenchmarkPSReadCategory measures the server's side of a replication read:
// a $ce- group (links resolved, Pinned, the client's other defaults) over
// 1,000 interleaved streams, read through the Read RPC by one consumer that
// acks in small batches, as a replicator acks each write. The consumer is
// kept minimal (raw messages, ids decoded by hand) so that allocations and
// time are mostly the server's. One op delivers and acks every event once
// (events/op), so per event costs are the op's divided by that.
func BenchmarkPSReadCategory(b *testing.B) {
	const streams, perStream, ackBatch = 1000, 20, 16
	const total = streams * perStream
	srv := Start(b, Options{Insecure: true})
	data := []byte(`{"orderId":"123","amount":42,"currency":"EUR"}`)
	for i := 0; i < perStream; i++ {
		for s := 0; s < streams; s++ {
			if _, err := srv.Store().Append("bench-"+strconv.Itoa(s), Expected{Kind: ExpectAny}, []ProposedEvent{{
				ID: uuid.New(), Type: "OrderPlaced", IsJSON: true, Data: data,
			}}); err != nil {
				b.Fatal(err)
			}
		}
	}
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	desc := &grpc.StreamDesc{StreamName: "Read", ServerStreams: true, ClientStreams: true}
	const method = "/event_store.client.persistent_subscriptions.PersistentSubscriptions/Read"

	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		group := "g" + strconv.Itoa(n)
		if st := srv.ps.create(&psSettings{
			Stream: "$ce-bench", Group: group, ResolveLinks: true, Strategy: strategyPinned,
			MaxRetryCount: 10, MinCheckpointCount: 10, MaxCheckpointCount: 1000,
			LiveBufferSize: 500, ReadBatchSize: 20, HistoryBufferSize: 500,
			MessageTimeoutMs: 30_000, CheckpointAfterMs: 2_000,
		}, "admin"); st.err != nil {
			b.Fatal(st.err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := conn.NewStream(ctx, desc, method, grpc.ForceCodecV2(pbwire.Codec{}))
		if err != nil {
			b.Fatal(err)
		}
		if err := stream.SendMsg(&persistent.ReadReq{Content: &persistent.ReadReq_Options_{Options: &persistent.ReadReq_Options{
			StreamOption: &persistent.ReadReq_Options_StreamIdentifier{StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte("$ce-bench")}},
			GroupName:    group,
			BufferSize:   10_000,
			UuidOption:   &persistent.ReadReq_Options_UUIDOption{Content: &persistent.ReadReq_Options_UUIDOption_Structured{Structured: &shared.Empty{}}},
		}}}); err != nil {
			b.Fatal(err)
		}
		var raw pbwire.Raw
		if err := stream.RecvMsg(&raw); err != nil {
			b.Fatal(err)
		}
		ack := pbwire.Settle{SubscriptionID: []byte("$ce-bench::" + group)}
		for i := 0; i < total; i++ {
			if err := stream.RecvMsg(&raw); err != nil {
				b.Fatal(err)
			}
			id, ok := benchAckID(raw)
			if !ok {
				b.Fatalf("delivery %d: no link id in %x", i, raw)
			}
			if ack.IDs = append(ack.IDs, id); len(ack.IDs) == ackBatch || i == total-1 {
				if err := stream.SendMsg(&ack); err != nil {
					b.Fatal(err)
				}
				ack.IDs = ack.IDs[:0]
			}
		}
		// Wait for the last acks, then stop the read and drop the group.
		sub := srv.ps.get("$ce-bench", group)
		for left := 1; left > 0; {
			if err := sub.call(func() { left = len(sub.outstanding) }); err != nil {
				b.Fatal(err)
			}
		}
		cancel()
		if _, err := srv.ps.Delete(context.Background(), &persistent.DeleteReq{Options: &persistent.DeleteReq_Options{
			StreamOption: &persistent.DeleteReq_Options_StreamIdentifier{StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte("$ce-bench")}},
			GroupName:    group,
		}}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(total), "events/op")
}

// benchAckID finds the id a delivery is acked by: that of its link
// (ReadResp.event.link.id.structured).
func benchAckID(b []byte) (uuid.UUID, bool) {
	for _, num := range []protowire.Number{1, 2, 1, 1} {
		b = benchField(b, num)
		if b == nil {
			return uuid.UUID{}, false
		}
	}
	var id uuid.UUID
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.VarintType || (num != 1 && num != 2) {
			return uuid.UUID{}, false
		}
		v, m := protowire.ConsumeVarint(b[n:])
		if m < 0 {
			return uuid.UUID{}, false
		}
		binary.BigEndian.PutUint64(id[8*(num-1):], v)
		b = b[n+m:]
	}
	return id, true
}

// benchField returns the contents of the first length-delimited field num.
func benchField(b []byte, num protowire.Number) []byte {
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return nil
		}
		b = b[l:]
		if n == num && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return nil
			}
			return v
		}
		m := protowire.ConsumeFieldValue(n, typ, b)
		if m < 0 {
			return nil
		}
		b = b[m:]
	}
	return nil
}
