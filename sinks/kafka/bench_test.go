package kafka

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/ditto-replicator/ditto/sinks"
)

// BenchmarkWrite writes batches of 10 events of 128 streams at once, as the
// replicator does with DITTO_WRITERS=128.
func BenchmarkWrite(b *testing.B) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, "events"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	k := open(b, settings(c, "events"))
	const writers, batch = 128, 10
	evs := make([][]sinks.Event, writers)
	for i := range evs {
		evs[i] = events(fmt.Sprintf("bench-%d", i), 0, batch)
	}
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N/(writers*batch) + 1
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				if err := k.Write(context.Background(), evs[w][0].Stream, evs[w]); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
