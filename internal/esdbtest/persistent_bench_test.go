package esdbtest

import (
	"context"
	"encoding/binary"
	"strconv"
	"syscall"
	"testing"
	"time"

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
	benchPSReadCategory(b, 20, 16, false)
}

// BenchmarkPSReadCategoryDeep is the replication run's shape: 100 events per
// stream, a consumer buffer of 10,000 kept nearly full, and each ack the ids
// of one stream (ten of them, as one destination write acks them), so acks
// look up ids delivered thousands of messages earlier.
func BenchmarkPSReadCategoryDeep(b *testing.B) {
	benchPSReadCategory(b, 100, 10, true)
}

// benchPSReadCategory runs the read of BenchmarkPSReadCategory. byStream
// acks the ids of one stream together, ackBatch at a time; otherwise every
// ackBatch ids are acked in delivery order. With byStream, ackBatch times
// the 1,000 streams must stay within the consumer buffer of 10,000, or the
// read stalls.
func benchPSReadCategory(b *testing.B, perStream, ackBatch int, byStream bool) {
	const streams = 1000
	total := streams * perStream
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

	var pending [][]uuid.UUID // byStream: each stream's ids not yet acked
	if byStream {
		pending = make([][]uuid.UUID, streams)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := benchCPUTime(b)
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
			ids := &ack.IDs
			if byStream {
				// Appended round-robin, so delivery i is of stream i%streams.
				ids = &pending[i%streams]
			}
			if *ids = append(*ids, id); len(*ids) == ackBatch || (!byStream && i == total-1) {
				ack.IDs = *ids
				if err := stream.SendMsg(&ack); err != nil {
					b.Fatal(err)
				}
				*ids = (*ids)[:0]
			}
		}
		for i := range pending {
			if len(pending[i]) > 0 {
				ack.IDs = pending[i]
				if err := stream.SendMsg(&ack); err != nil {
					b.Fatal(err)
				}
				pending[i] = pending[i][:0]
			}
		}
		// Wait for the last acks, then stop the read and drop the group.
		sub := srv.ps.get("$ce-bench", group)
		for left := 1; left > 0; {
			if err := sub.call(func() { left = sub.outstanding.len() }); err != nil {
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
	// The process's CPU time, client included, is steadier on a shared
	// machine than the wall time, which depends on how the goroutines of
	// both ends overlap.
	b.ReportMetric(float64(benchCPUTime(b)-cpu0)/float64(b.N*total), "cpu-ns/event")
}

// benchCPUTime is the user and system CPU time the process used so far.
func benchCPUTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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

// BenchmarkPSSubCategory is the subscription goroutine's share of
// BenchmarkPSReadCategoryDeep without the transport: the state machine
// (newSubState) reads, resolves and delivers the $ce-bench links of 1,000
// interleaved streams of 100 events to one consumer with a buffer of
// 10,000, which acks the ids of one stream ten at a time, with the
// checkpoints that writes. One op reads the whole category once.
func BenchmarkPSSubCategory(b *testing.B) {
	const streams, perStream, ackBatch = 1000, 100, 10
	const total = streams * perStream
	st := psNewStore(b)
	data := []byte(`{"orderId":"123","amount":42,"currency":"EUR"}`)
	for i := 0; i < perStream; i++ {
		for s := 0; s < streams; s++ {
			if _, err := st.Append("bench-"+strconv.Itoa(s), Expected{Kind: ExpectAny}, []ProposedEvent{{
				ID: uuid.New(), Type: "OrderPlaced", IsJSON: true, Data: data,
			}}); err != nil {
				b.Fatal(err)
			}
		}
	}
	pending := make([][]uuid.UUID, streams)
	var spare []sendItem
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		set := &psSettings{
			Stream: "$ce-bench", Group: "g" + strconv.Itoa(n), ResolveLinks: true, Strategy: strategyPinned,
			MaxRetryCount: 10, MinCheckpointCount: 10, MaxCheckpointCount: 1000,
			LiveBufferSize: 500, ReadBatchSize: 20, HistoryBufferSize: 500,
			MessageTimeoutMs: 30_000, CheckpointAfterMs: 2_000,
		}
		s := newSubState(st, set)
		s.joinForTest(10_000)
		c := s.consumers[0]
		for i := 0; i < total; {
			s.fill()
			s.push()
			items := c.take(spare)
			if len(items) == 0 {
				b.Fatalf("stalled after %d deliveries", i)
			}
			for j := range items {
				// Appended round-robin, so delivery i is of stream i%streams.
				ids := &pending[i%streams]
				if *ids = append(*ids, items[j].ev.Link.ID); len(*ids) == ackBatch {
					s.ack(*ids)
					*ids = (*ids)[:0]
				}
				items[j] = sendItem{}
				i++
			}
			s.maybeCheckpoint(false)
			spare = items
		}
		for i := range pending {
			s.ack(pending[i])
			pending[i] = pending[i][:0]
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(total), "events/op")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*total), "ns/event")
}
