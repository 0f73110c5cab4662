package testutil

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
)

// ExpectedAt is the expected revision of an append whose first event is
// number next of its stream.
func ExpectedAt(next int) esdb.ExpectedRevision {
	if next == 0 {
		return esdb.NoStream{}
	}
	return esdb.Revision(uint64(next - 1))
}

// AppendInOrder appends one small event to each "stream:n" in order (n is
// the stream's next number), so that a category stream holds them in that
// order.
func AppendInOrder(t testing.TB, c *esdb.Client, order ...string) {
	t.Helper()
	for _, o := range order {
		stream, num, _ := strings.Cut(o, ":")
		var n int
		fmt.Sscan(num, &n)
		if _, err := c.AppendToStream(context.Background(), stream, esdb.AppendToStreamOptions{ExpectedRevision: ExpectedAt(n)},
			esdb.EventData{EventID: uuid.New(), EventType: "t", ContentType: esdb.ContentTypeJson, Data: []byte("{}")}); err != nil {
			t.Fatalf("appending %s: %v", o, err)
		}
	}
}

// Checkpointed is a condition for Eventually: stream::group on c has its
// last checkpoint at n.
func Checkpointed(c *esdb.Client, stream, group string, n uint64) func() bool {
	return func() bool {
		info, err := c.GetPersistentSubscriptionInfo(context.Background(), stream, group, esdb.GetPersistentSubscriptionOptions{})
		return err == nil && info.Stats.LastCheckpointedEventRevision != nil && *info.Stats.LastCheckpointedEventRevision == n
	}
}

// AckFirst creates stream::group on c from from (links resolved,
// DispatchToSingle, a checkpoint after every ack), acks its first n events
// in order and waits for the checkpoint at n-1.
func AckFirst(t testing.TB, c *esdb.Client, stream, group string, from esdb.StreamPosition, n int) {
	t.Helper()
	st := esdb.SubscriptionSettingsDefault()
	st.ResolveLinkTos = true
	st.ConsumerStrategyName = esdb.ConsumerStrategyDispatchToSingle
	st.CheckpointLowerBound, st.CheckpointUpperBound = 1, 1
	if err := c.CreatePersistentSubscription(context.Background(), stream, group, esdb.PersistentStreamSubscriptionOptions{Settings: &st, StartFrom: from}); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		return
	}
	sub, err := c.SubscribeToPersistentSubscription(context.Background(), stream, group, esdb.SubscribeToPersistentSubscriptionOptions{BufferSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for range n {
		e := sub.Recv()
		if e.EventAppeared == nil {
			t.Fatalf("no event: %+v", e)
		}
		if err := sub.Ack(e.EventAppeared.Event); err != nil {
			t.Fatal(err)
		}
	}
	Eventually(t, 30*time.Second, fmt.Sprintf("checkpoint of %s::%s at %d", stream, group, n-1), Checkpointed(c, stream, group, uint64(n-1)))
}
