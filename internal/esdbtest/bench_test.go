package esdbtest

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
)

// batchSize is the number of events per append in the benchmarks.
const batchSize = 100

// BenchmarkAppend measures append throughput in batches of 100 events, into
// one stream and round-robin across 1,000 streams (each with a category, so
// the $ce-/$et- projections run too), directly on the Store and through the
// official client over gRPC. It reports events/s.
func BenchmarkAppend(b *testing.B) {
	for _, streams := range []int{1, 1000} {
		names := make([]string, streams)
		for i := range names {
			names[i] = "bench-" + strconv.Itoa(i)
		}
		b.Run("store/streams="+strconv.Itoa(streams), func(b *testing.B) {
			s, err := NewStore(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			batch := make([]ProposedEvent, batchSize)
			data := []byte(`{"orderId":"123","amount":42,"currency":"EUR"}`)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for j := range batch {
					batch[j] = ProposedEvent{ID: uuid.New(), Type: "OrderPlaced", IsJSON: true, Data: data}
				}
				if _, err := s.Append(names[i%streams], Expected{Kind: ExpectAny}, batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*batchSize)/b.Elapsed().Seconds(), "events/s")
		})
		b.Run("grpc/streams="+strconv.Itoa(streams), func(b *testing.B) {
			srv := Start(b, Options{Insecure: true, Dir: b.TempDir()})
			c := Connect(b, Config(b, srv.ConnectionString()))
			batch := make([]esdb.EventData, batchSize)
			for j := range batch {
				// A zero EventID makes the client pick a fresh random one.
				batch[j] = esdb.EventData{EventType: "OrderPlaced", ContentType: esdb.ContentTypeJson,
					Data: []byte(`{"orderId":"123","amount":42,"currency":"EUR"}`)}
			}
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.AppendToStream(ctx, names[i%streams], esdb.AppendToStreamOptions{}, batch...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*batchSize)/b.Elapsed().Seconds(), "events/s")
		})
		// Several appenders in flight, as a replicator with concurrent
		// writers would run; on 2 cores client and server share the CPU.
		b.Run("grpc-parallel/streams="+strconv.Itoa(streams), func(b *testing.B) {
			srv := Start(b, Options{Insecure: true, Dir: b.TempDir()})
			c := Connect(b, Config(b, srv.ConnectionString()))
			var next atomic.Int64
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				batch := make([]esdb.EventData, batchSize)
				for j := range batch {
					batch[j] = esdb.EventData{EventType: "OrderPlaced", ContentType: esdb.ContentTypeJson,
						Data: []byte(`{"orderId":"123","amount":42,"currency":"EUR"}`)}
				}
				for pb.Next() {
					i := next.Add(1)
					if _, err := c.AppendToStream(context.Background(), names[int(i)%streams], esdb.AppendToStreamOptions{}, batch...); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*batchSize)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
