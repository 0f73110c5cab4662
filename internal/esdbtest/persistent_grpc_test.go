package esdbtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// psTimeout bounds every wait in these tests; none of them is a timing
// assertion, only a guard against hanging.
const psTimeout = 15 * time.Second

func psClient(t testing.TB) (*Server, *esdb.Client) {
	t.Helper()
	srv := Start(t, Options{Insecure: true})
	return srv, Connect(t, Config(t, srv.ConnectionString()))
}

func psEvents(n int) []esdb.EventData {
	evs := make([]esdb.EventData, n)
	for i := range evs {
		evs[i] = esdb.EventData{EventID: uuid.New(), EventType: "test", ContentType: esdb.ContentTypeJson, Data: []byte(`{}`)}
	}
	return evs
}

func psAppend(t testing.TB, c *esdb.Client, stream string, n int) {
	t.Helper()
	if _, err := c.AppendToStream(context.Background(), stream, esdb.AppendToStreamOptions{}, psEvents(n)...); err != nil {
		t.Fatal(err)
	}
}

// psStream turns a persistent subscription into a channel of its events,
// closed after the drop event.
func psStream(sub *esdb.PersistentSubscription) <-chan *esdb.PersistentSubscriptionEvent {
	ch := make(chan *esdb.PersistentSubscriptionEvent, 1024)
	go func() {
		defer close(ch)
		for {
			ev := sub.Recv()
			ch <- ev
			if ev.SubscriptionDropped != nil {
				return
			}
		}
	}()
	return ch
}

// psNext is the next event of ch; it fails the test on a drop or timeout.
func psNext(t testing.TB, ch <-chan *esdb.PersistentSubscriptionEvent) *esdb.EventAppeared {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok || ev.SubscriptionDropped != nil {
			t.Fatalf("subscription dropped: %v", ev)
		}
		return ev.EventAppeared
	case <-time.After(psTimeout):
		t.Fatal("timed out waiting for an event")
	}
	return nil
}

// psDrop waits for the drop event and returns its error.
func psDrop(t testing.TB, ch <-chan *esdb.PersistentSubscriptionEvent) error {
	t.Helper()
	deadline := time.After(psTimeout)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("channel closed without a drop")
			}
			if ev.SubscriptionDropped != nil {
				return ev.SubscriptionDropped.Error
			}
		case <-deadline:
			t.Fatal("timed out waiting for the drop")
		}
	}
}

func psClientSettings(strategy esdb.ConsumerStrategy) *esdb.PersistentSubscriptionSettings {
	s := esdb.SubscriptionSettingsDefault()
	s.ConsumerStrategyName = strategy
	return &s
}

func psSubscribe(t testing.TB, c *esdb.Client, stream, group string, buffer uint32) (*esdb.PersistentSubscription, <-chan *esdb.PersistentSubscriptionEvent) {
	t.Helper()
	sub, err := c.SubscribeToPersistentSubscription(context.Background(), stream, group, esdb.SubscribeToPersistentSubscriptionOptions{BufferSize: buffer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return sub, psStream(sub)
}

func TestPSGRPCRoundRobinSpreads(t *testing.T) {
	_, c := psClient(t)
	ctx := context.Background()
	if err := c.CreatePersistentSubscription(ctx, "rr", "g", esdb.PersistentStreamSubscriptionOptions{
		StartFrom: esdb.Start{}, Settings: psClientSettings(esdb.ConsumerStrategyRoundRobin),
	}); err != nil {
		t.Fatal(err)
	}
	subA, a := psSubscribe(t, c, "rr", "g", 10)
	subB, b := psSubscribe(t, c, "rr", "g", 10)
	psAppend(t, c, "rr", 20)
	seen := map[uuid.UUID]bool{}
	counts := [2]int{}
	for len(seen) < 20 {
		select {
		case ev := <-a:
			if ev.EventAppeared == nil {
				t.Fatalf("a dropped: %v", ev.SubscriptionDropped.Error)
			}
			seen[ev.EventAppeared.Event.Event.EventID] = true
			counts[0]++
			_ = subA.Ack(ev.EventAppeared.Event)
		case ev := <-b:
			if ev.EventAppeared == nil {
				t.Fatalf("b dropped: %v", ev.SubscriptionDropped.Error)
			}
			seen[ev.EventAppeared.Event.Event.EventID] = true
			counts[1]++
			_ = subB.Ack(ev.EventAppeared.Event)
		case <-time.After(psTimeout):
			t.Fatalf("timed out with %d of 20 events", len(seen))
		}
	}
	if counts[0] == 0 || counts[1] == 0 || counts[0]+counts[1] != 20 {
		t.Fatalf("round robin counts %v", counts)
	}
}

func TestPSGRPCDispatchToSingleFillsFirstConsumer(t *testing.T) {
	_, c := psClient(t)
	ctx := context.Background()
	if err := c.CreatePersistentSubscription(ctx, "single", "g", esdb.PersistentStreamSubscriptionOptions{
		StartFrom: esdb.Start{}, Settings: psClientSettings(esdb.ConsumerStrategyDispatchToSingle),
	}); err != nil {
		t.Fatal(err)
	}
	_, a := psSubscribe(t, c, "single", "g", 10)
	_, b := psSubscribe(t, c, "single", "g", 10)
	psAppend(t, c, "single", 4)
	for i := 0; i < 4; i++ {
		if ev := psNext(t, a); ev.Event.Event.EventNumber != uint64(i) {
			t.Fatalf("event %d: number %d", i, ev.Event.Event.EventNumber)
		}
	}
	info, err := c.GetPersistentSubscriptionInfo(ctx, "single", "g", esdb.GetPersistentSubscriptionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var inFlight []int64
	for _, conn := range info.Connections {
		inFlight = append(inFlight, conn.InFlightMessages)
	}
	if fmt.Sprint(inFlight) != "[4 0]" {
		t.Fatalf("in flight per consumer %v, want [4 0]", inFlight)
	}
	select {
	case ev := <-b:
		t.Fatalf("second consumer got %+v while the first had room", ev)
	default:
	}
}

// Pinned keeps every source stream of a $ce- category on one consumer, and
// spreads the streams over both consumers.
func TestPSGRPCPinnedKeepsStreamOnOneConsumer(t *testing.T) {
	_, c := psClient(t)
	ctx := context.Background()
	settings := psClientSettings(esdb.ConsumerStrategyPinned)
	settings.ResolveLinkTos = true
	if err := c.CreatePersistentSubscription(ctx, "$ce-order", "g", esdb.PersistentStreamSubscriptionOptions{
		StartFrom: esdb.Start{}, Settings: settings,
	}); err != nil {
		t.Fatal(err)
	}
	subs := make([]*esdb.PersistentSubscription, 2)
	chans := make([]<-chan *esdb.PersistentSubscriptionEvent, 2)
	for i := range subs {
		subs[i], chans[i] = psSubscribe(t, c, "$ce-order", "g", 50)
	}
	const streams, perStream = 8, 5
	for round := 0; round < perStream; round++ {
		for s := 0; s < streams; s++ {
			psAppend(t, c, fmt.Sprintf("order-%d", s), 1)
		}
	}
	owner := map[string]int{}
	got := [2]int{}
	for n := 0; n < streams*perStream; n++ {
		var ev *esdb.PersistentSubscriptionEvent
		var who int
		select {
		case ev = <-chans[0]:
		case ev = <-chans[1]:
			who = 1
		case <-time.After(psTimeout):
			t.Fatalf("timed out after %d events", n)
		}
		if ev.EventAppeared == nil {
			t.Fatalf("dropped: %v", ev.SubscriptionDropped.Error)
		}
		src := ev.EventAppeared.Event.Event.StreamID
		if prev, ok := owner[src]; ok && prev != who {
			t.Fatalf("stream %s went to consumers %d and %d", src, prev, who)
		}
		owner[src] = who
		got[who]++
		if ev.EventAppeared.Event.Link == nil {
			t.Fatal("resolved $ce- event without its link")
		}
		_ = subs[who].Ack(ev.EventAppeared.Event)
	}
	if got[0] == 0 || got[1] == 0 {
		t.Fatalf("pinned did not spread %d streams over two consumers: %v", streams, got)
	}
}

func TestPSGRPCParkAfterMaxRetriesAndReplay(t *testing.T) {
	srv, c := psClient(t)
	ctx := context.Background()
	settings := psClientSettings(esdb.ConsumerStrategyRoundRobin)
	settings.MaxRetryCount = 1
	if err := c.CreatePersistentSubscription(ctx, "retry", "g", esdb.PersistentStreamSubscriptionOptions{
		StartFrom: esdb.Start{}, Settings: settings,
	}); err != nil {
		t.Fatal(err)
	}
	sub, ch := psSubscribe(t, c, "retry", "g", 10)
	psAppend(t, c, "retry", 1)
	for want := 0; want <= 1; want++ {
		ev := psNext(t, ch)
		if ev.RetryCount != want {
			t.Fatalf("retry count %d, want %d", ev.RetryCount, want)
		}
		if err := sub.Nack("try again", esdb.NackActionRetry, ev.Event); err != nil {
			t.Fatal(err)
		}
	}
	parked := "$persistentsubscription-retry::g-parked"
	var recs []ResolvedRecord
	psWaitFor(t, "the parked message", func() bool {
		recs, _ = srv.Store().ReadStream(parked, 0, true, 10, false)
		return len(recs) == 1
	})
	if !strings.Contains(string(recs[0].Event.Metadata), `"reason":"Reached retry count of 1"`) {
		t.Fatalf("parked metadata %s", recs[0].Event.Metadata)
	}
	info, err := c.GetPersistentSubscriptionInfo(ctx, "retry", "g", esdb.GetPersistentSubscriptionOptions{})
	if err != nil || info.Stats.ParkedMessagesCount != 1 {
		t.Fatalf("info %+v, %v", info, err)
	}

	if err := c.ReplayParkedMessages(ctx, "retry", "g", esdb.ReplayParkedMessagesOptions{}); err != nil {
		t.Fatal(err)
	}
	ev := psNext(t, ch)
	if ev.RetryCount != 0 || ev.Event.Link == nil || ev.Event.Link.EventID != recs[0].Event.ID ||
		ev.Event.Event == nil || ev.Event.Event.StreamID != "retry" {
		t.Fatalf("replayed event %+v (link %+v)", ev, ev.Event.Link)
	}
	if err := sub.Ack(ev.Event); err != nil {
		t.Fatal(err)
	}
}

func TestPSGRPCCheckpointResumesAfterRestartSubsystem(t *testing.T) {
	_, c := psClient(t)
	ctx := context.Background()
	settings := psClientSettings(esdb.ConsumerStrategyRoundRobin)
	settings.CheckpointLowerBound, settings.CheckpointUpperBound = 1, 1
	if err := c.CreatePersistentSubscription(ctx, "ckpt", "g", esdb.PersistentStreamSubscriptionOptions{
		StartFrom: esdb.Start{}, Settings: settings,
	}); err != nil {
		t.Fatal(err)
	}
	psAppend(t, c, "ckpt", 10)
	sub, ch := psSubscribe(t, c, "ckpt", "g", 5)
	for i := 0; i < 5; i++ {
		if err := sub.Ack(psNext(t, ch).Event); err != nil {
			t.Fatal(err)
		}
	}
	psWaitFor(t, "checkpoint at 4", func() bool {
		info, err := c.GetPersistentSubscriptionInfo(ctx, "ckpt", "g", esdb.GetPersistentSubscriptionOptions{})
		return err == nil && info.Stats.LastCheckpointedEventRevision != nil && *info.Stats.LastCheckpointedEventRevision == 4
	})
	// Stop reading before the restart so that the in-flight events 5..9 are
	// not acked by this consumer.
	if err := c.RestartPersistentSubscriptionSubsystem(ctx, esdb.RestartPersistentSubscriptionSubsystemOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := psDrop(t, ch); status.Code(err) != codes.Canceled {
		t.Fatalf("drop error %v, want Canceled", err)
	}
	_, ch2 := psSubscribe(t, c, "ckpt", "g", 5)
	if ev := psNext(t, ch2); ev.Event.Event.EventNumber != 5 {
		t.Fatalf("resumed at %d, want 5", ev.Event.Event.EventNumber)
	}
}

func TestPSGRPCUnknownSubscriptionIsNotFound(t *testing.T) {
	_, c := psClient(t)
	ctx := context.Background()
	check := func(what string, err error) {
		t.Helper()
		var e *esdb.Error
		if !errors.As(err, &e) || e.Code() != esdb.ErrorCodeResourceNotFound {
			t.Fatalf("%s: %v, want ResourceNotFound", what, err)
		}
	}
	_, err := c.SubscribeToPersistentSubscription(ctx, "nope", "g", esdb.SubscribeToPersistentSubscriptionOptions{})
	check("subscribe", err)
	_, err = c.GetPersistentSubscriptionInfo(ctx, "nope", "g", esdb.GetPersistentSubscriptionOptions{})
	check("get info", err)
	check("delete", c.DeletePersistentSubscription(ctx, "nope", "g", esdb.DeletePersistentSubscriptionOptions{}))
	check("update", c.UpdatePersistentSubscription(ctx, "nope", "g", esdb.PersistentStreamSubscriptionOptions{}))
	check("replay", c.ReplayParkedMessages(ctx, "nope", "g", esdb.ReplayParkedMessagesOptions{}))
	_, err = c.ListPersistentSubscriptionsForStream(ctx, "nope", esdb.ListPersistentSubscriptionsOptions{})
	check("list for stream", err)
}

func TestPSGRPCExistsAndMaxSubscribers(t *testing.T) {
	_, c := psClient(t)
	ctx := context.Background()
	settings := psClientSettings(esdb.ConsumerStrategyRoundRobin)
	settings.MaxSubscriberCount = 1
	opts := esdb.PersistentStreamSubscriptionOptions{Settings: settings}
	if err := c.CreatePersistentSubscription(ctx, "max", "g", opts); err != nil {
		t.Fatal(err)
	}
	var e *esdb.Error
	if err := c.CreatePersistentSubscription(ctx, "max", "g", opts); !errors.As(err, &e) || e.Code() != esdb.ErrorCodeResourceAlreadyExists {
		t.Fatalf("second create: %v", err)
	}
	psSubscribe(t, c, "max", "g", 1)
	_, err := c.SubscribeToPersistentSubscription(ctx, "max", "g", esdb.SubscribeToPersistentSubscriptionOptions{})
	if !errors.As(err, &e) || e.Code() != esdb.ErrorCodeUnknown || !strings.Contains(err.Error(), "Maximum subscriptions") {
		t.Fatalf("second consumer: %v, want maximum-subscribers-reached", err)
	}
}

// psRawRead opens a Read RPC without the esdb client (to see trailers, or to
// ask for ids as strings), with room for n messages in flight, and checks
// the confirmation.
func psRawRead(t *testing.T, srv *Server, stream, group string, stringIDs bool, n int32) persistent.PersistentSubscriptions_ReadClient {
	t.Helper()
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rc, err := persistent.NewPersistentSubscriptionsClient(conn).Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	opt := &persistent.ReadReq_Options_UUIDOption{Content: &persistent.ReadReq_Options_UUIDOption_Structured{Structured: &shared.Empty{}}}
	if stringIDs {
		opt.Content = &persistent.ReadReq_Options_UUIDOption_String_{String_: &shared.Empty{}}
	}
	if err := rc.Send(&persistent.ReadReq{Content: &persistent.ReadReq_Options_{Options: &persistent.ReadReq_Options{
		StreamOption: &persistent.ReadReq_Options_StreamIdentifier{StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(stream)}},
		GroupName:    group, BufferSize: n, UuidOption: opt,
	}}}); err != nil {
		t.Fatal(err)
	}
	resp, err := rc.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetSubscriptionConfirmation().GetSubscriptionId() != stream+"::"+group {
		t.Fatalf("first message %v, want the confirmation", resp)
	}
	return rc
}

// psRecvUntilError reads events (only events may follow the confirmation)
// until the stream ends.
func psRecvUntilError(t *testing.T, rc persistent.PersistentSubscriptions_ReadClient) error {
	t.Helper()
	for i := 0; i < 10000; i++ {
		resp, err := rc.Recv()
		if err != nil {
			return err
		}
		if resp.GetEvent() == nil {
			t.Fatalf("non-event message after the confirmation: %v", resp)
		}
	}
	t.Fatal("stream did not end")
	return nil
}

func psCheckDropTrailer(t *testing.T, rc persistent.PersistentSubscriptions_ReadClient, stream, group string) {
	t.Helper()
	err := psRecvUntilError(t, rc)
	if status.Code(err) != codes.Canceled {
		t.Fatalf("drop status %v, want Canceled", err)
	}
	md := rc.Trailer()
	want := metadata.Pairs("exception", "persistent-subscription-dropped", "stream-name", stream, "group-name", group)
	for k, v := range want {
		if got := md.Get(k); len(got) != 1 || got[0] != v[0] {
			t.Fatalf("trailer %s = %v, want %v (all: %v)", k, got, v, md)
		}
	}
}

func TestPSGRPCDropOnUpdateAndDelete(t *testing.T) {
	srv, c := psClient(t)
	ctx := context.Background()
	if err := c.CreatePersistentSubscription(ctx, "drop", "g", esdb.PersistentStreamSubscriptionOptions{StartFrom: esdb.Start{}}); err != nil {
		t.Fatal(err)
	}
	psAppend(t, c, "drop", 3)
	rc := psRawRead(t, srv, "drop", "g", false, 10)
	_, ch := psSubscribe(t, c, "drop", "g", 10)
	if err := c.UpdatePersistentSubscription(ctx, "drop", "g", esdb.PersistentStreamSubscriptionOptions{}); err != nil {
		t.Fatal(err)
	}
	psCheckDropTrailer(t, rc, "drop", "g")
	if err := psDrop(t, ch); status.Code(err) != codes.Canceled {
		t.Fatalf("client drop error %v", err)
	}

	rc = psRawRead(t, srv, "drop", "g", false, 10)
	if err := c.DeletePersistentSubscription(ctx, "drop", "g", esdb.DeletePersistentSubscriptionOptions{}); err != nil {
		t.Fatal(err)
	}
	psCheckDropTrailer(t, rc, "drop", "g")
	if _, err := c.GetPersistentSubscriptionInfo(ctx, "drop", "g", esdb.GetPersistentSubscriptionOptions{}); err == nil {
		t.Fatal("subscription still exists after delete")
	}
}

func TestPSGRPCAllWithFilter(t *testing.T) {
	_, c := psClient(t)
	ctx := context.Background()
	if err := c.CreatePersistentSubscriptionToAll(ctx, "g", esdb.PersistentAllSubscriptionOptions{
		StartFrom: esdb.End{},
		Filter:    &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Prefixes: []string{"keep-"}},
	}); err != nil {
		t.Fatal(err)
	}
	sub, err := c.SubscribeToPersistentSubscriptionToAll(ctx, "g", esdb.SubscribeToPersistentSubscriptionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ch := psStream(sub)
	psAppend(t, c, "drop-1", 2)
	psAppend(t, c, "keep-1", 2)
	for i := 0; i < 2; i++ {
		ev := psNext(t, ch)
		if ev.Event.Event.StreamID != "keep-1" || ev.Event.Event.EventNumber != uint64(i) {
			t.Fatalf("event %d from %s #%d", i, ev.Event.Event.StreamID, ev.Event.Event.EventNumber)
		}
		_ = sub.Ack(ev.Event)
	}
}

func TestPSHTTPPutCreatesSubscription(t *testing.T) {
	srv, c := psClient(t)
	put := func(body string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodPut, "http://"+srv.Addr()+"/subscriptions/web/g", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	if got := put(`{"startFrom":"bad"}`); got != http.StatusBadRequest {
		t.Fatalf("bad JSON: %d", got)
	}
	if got := put(`{"namedConsumerStrategy":"Nope"}`); got != http.StatusBadRequest {
		t.Fatalf("bad strategy: %d", got)
	}
	if got := put(`{"resolveLinktos":true,"startFrom":0,"namedConsumerStrategy":"Pinned","maxRetryCount":3}`); got != http.StatusCreated {
		t.Fatalf("create: %d", got)
	}
	if got := put(`{}`); got != http.StatusConflict {
		t.Fatalf("second create: %d", got)
	}
	info, err := c.GetPersistentSubscriptionInfo(context.Background(), "web", "g", esdb.GetPersistentSubscriptionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !info.Settings.ResolveLinkTos || info.Settings.ConsumerStrategyName != esdb.ConsumerStrategyPinned || info.Settings.MaxRetryCount != 3 {
		t.Fatalf("settings %+v", info.Settings)
	}
}

// BenchmarkPSDelivery measures events/s delivered and acked to one consumer
// (buffer 500) from a stream of 100k events: acking each event with its own
// Ack message, and acking in batches of 100 (as a consumer that processes in
// batches would).
func BenchmarkPSDelivery(b *testing.B) {
	const total = 100_000
	_, c := psClient(b)
	ctx := context.Background()
	for i := 0; i < total; i += 1000 {
		psAppend(b, c, "bench", 1000)
	}
	groups := 0
	for _, ackBatch := range []int{1, 100} {
		b.Run(fmt.Sprintf("ack-batch-%d", ackBatch), func(b *testing.B) {
			start := time.Now()
			delivered := 0
			for n := 0; n < b.N; n++ {
				groups++
				group := fmt.Sprintf("g%d", groups)
				settings := psClientSettings(esdb.ConsumerStrategyRoundRobin)
				settings.ReadBatchSize = 100
				if err := c.CreatePersistentSubscription(ctx, "bench", group, esdb.PersistentStreamSubscriptionOptions{StartFrom: esdb.Start{}, Settings: settings}); err != nil {
					b.Fatal(err)
				}
				sub, err := c.SubscribeToPersistentSubscription(ctx, "bench", group, esdb.SubscribeToPersistentSubscriptionOptions{BufferSize: 500})
				if err != nil {
					b.Fatal(err)
				}
				pending := make([]*esdb.ResolvedEvent, 0, ackBatch)
				for i := 0; i < total; i++ {
					ev := sub.Recv()
					if ev.EventAppeared == nil {
						b.Fatalf("dropped after %d: %v", i, ev.SubscriptionDropped.Error)
					}
					if pending = append(pending, ev.EventAppeared.Event); len(pending) == ackBatch {
						if err := sub.Ack(pending...); err != nil {
							b.Fatal(err)
						}
						pending = pending[:0]
					}
					delivered++
				}
				_ = sub.Close()
			}
			b.ReportMetric(float64(delivered)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// The config and the checkpoint live in the store, so a server reopened on
// the same directory still has the subscription and resumes after the
// checkpoint.
func TestPSGRPCSurvivesReopenFromDisk(t *testing.T) {
	dir := t.TempDir()
	connect := func(srv *Server) *esdb.Client { return Connect(t, Config(t, srv.ConnectionString())) }
	ctx := context.Background()
	srv := Start(t, Options{Insecure: true, Dir: dir})
	c := connect(srv)
	settings := psClientSettings(esdb.ConsumerStrategyPinned)
	settings.CheckpointLowerBound, settings.CheckpointUpperBound = 1, 1
	if err := c.CreatePersistentSubscription(ctx, "disk", "g", esdb.PersistentStreamSubscriptionOptions{
		StartFrom: esdb.Start{}, Settings: settings,
	}); err != nil {
		t.Fatal(err)
	}
	psAppend(t, c, "disk", 6)
	sub, ch := psSubscribe(t, c, "disk", "g", 3)
	for i := 0; i < 3; i++ {
		if err := sub.Ack(psNext(t, ch).Event); err != nil {
			t.Fatal(err)
		}
	}
	psWaitFor(t, "checkpoint at 2", func() bool {
		cp, ok := (&psSub{settings: &psSettings{Stream: "disk", Group: "g"}, store: srv.Store()}).loadCheckpoint()
		return ok && cp == 2
	})
	_ = sub.Close()
	_ = c.Close()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}

	srv = Start(t, Options{Insecure: true, Dir: dir})
	c = connect(srv)
	info, err := c.GetPersistentSubscriptionInfo(ctx, "disk", "g", esdb.GetPersistentSubscriptionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Settings.ConsumerStrategyName != esdb.ConsumerStrategyPinned || info.Settings.CheckpointUpperBound != 1 {
		t.Fatalf("reloaded settings %+v", info.Settings)
	}
	_, ch = psSubscribe(t, c, "disk", "g", 3)
	if ev := psNext(t, ch); ev.Event.Event.EventNumber != 3 {
		t.Fatalf("resumed at %d, want 3", ev.Event.Event.EventNumber)
	}
}

// Mirrors the official testPersistentSubscriptionClosing (skipped upstream
// without the populated database) and checks the server side of a close:
// the closed consumer's unacked events go to the next consumer with
// retryCount+1.
func TestPSGRPCCloseRequeuesInFlight(t *testing.T) {
	_, c := psClient(t)
	ctx := context.Background()
	settings := psClientSettings(esdb.ConsumerStrategyRoundRobin)
	settings.CheckpointLowerBound, settings.CheckpointUpperBound = 1, 1
	if err := c.CreatePersistentSubscription(ctx, "closing", "g", esdb.PersistentStreamSubscriptionOptions{StartFrom: esdb.Start{}, Settings: settings}); err != nil {
		t.Fatal(err)
	}
	psAppend(t, c, "closing", 20)
	sub, ch := psSubscribe(t, c, "closing", "g", 2)
	for i := 0; i < 10; i++ {
		if err := sub.Ack(psNext(t, ch).Event); err != nil {
			t.Fatal(err)
		}
	}
	// Once the server has processed the ten acks (checkpoint 9), events 10
	// and 11 are in flight, unacked, when the consumer closes.
	psWaitFor(t, "checkpoint at 9", func() bool {
		info, err := c.GetPersistentSubscriptionInfo(ctx, "closing", "g", esdb.GetPersistentSubscriptionOptions{})
		return err == nil && info.Stats.LastCheckpointedEventRevision != nil && *info.Stats.LastCheckpointedEventRevision == 9
	})
	_ = sub.Close()
	psDrop(t, ch)
	// The drop is local; the server requeues 10 and 11 only once it sees
	// the call end. A consumer that joins before then gets 12 first.
	psWaitFor(t, "the closed consumer to leave", func() bool {
		info, err := c.GetPersistentSubscriptionInfo(ctx, "closing", "g", esdb.GetPersistentSubscriptionOptions{})
		return err == nil && len(info.Connections) == 0
	})
	_, ch2 := psSubscribe(t, c, "closing", "g", 2)
	ev := psNext(t, ch2)
	if ev.Event.Event.EventNumber != 10 || ev.RetryCount != 1 {
		t.Fatalf("after close: event %d retry %d, want 10 retry 1", ev.Event.Event.EventNumber, ev.RetryCount)
	}
}

// GetInfo's last known event is the last event the subscription has read,
// as on the real server (PersistentSubscriptionStats), not the stream's
// end: a group that is behind has read only as far as its buffers hold.
func TestPSGRPCLastKnownIsTheLastEventRead(t *testing.T) {
	_, c := psClient(t)
	ctx := context.Background()
	settings := psClientSettings(esdb.ConsumerStrategyRoundRobin)
	settings.HistoryBufferSize, settings.LiveBufferSize, settings.ReadBatchSize = 50, 50, 10
	if err := c.CreatePersistentSubscription(ctx, "known", "g", esdb.PersistentStreamSubscriptionOptions{StartFrom: esdb.Start{}, Settings: settings}); err != nil {
		t.Fatal(err)
	}
	known := func() *uint64 {
		info, err := c.GetPersistentSubscriptionInfo(ctx, "known", "g", esdb.GetPersistentSubscriptionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return info.Stats.LastKnownEventRevision
	}
	if k := known(); k != nil {
		t.Fatalf("last known %d before any event", *k)
	}
	psAppend(t, c, "known", 1000)
	waitFor(t, 10*time.Second, "the buffers (100 events) read", func() bool {
		k := known()
		return k != nil && *k == 99
	})
	_, events := psSubscribe(t, c, "known", "g", 10)
	psNext(t, events)
	// Delivering frees buffer room, so the subscription reads on; it never
	// reports more than it read.
	waitFor(t, 10*time.Second, "reading on", func() bool {
		k := known()
		return k != nil && *k > 99 && *k < 999
	})
}
