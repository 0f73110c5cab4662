package consumer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"github.com/rs/zerolog"
	"golang.org/x/net/http2"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/metrics"
)

// source starts a test server and a client of it.
func source(t *testing.T, opts esdbtest.Options) (*esdbtest.Server, *esdb.Client, *esdb.Configuration) {
	t.Helper()
	opts.Insecure = true
	srv := esdbtest.Start(t, opts)
	conf := esdbtest.Config(t, srv.ConnectionString())
	return srv, esdbtest.Connect(t, conf), conf
}

// run starts a consumer of stream:group and returns its deliveries.
func run(t *testing.T, client *esdb.Client, conf *esdb.Configuration, stream, group string, create bool) (*Consumer, <-chan *Delivery, <-chan error) {
	t.Helper()
	c := New(client, []config.Subscription{{Stream: stream, Group: group}}, metrics.New(), Options{
		BufferSize: 100, Create: create, Config: conf, BackoffInitial: time.Millisecond, BackoffMax: 10 * time.Millisecond,
	}, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan *Delivery, 1000)
	done, finished := make(chan error, 1), make(chan struct{})
	go func() {
		done <- c.Run(ctx, out)
		close(finished)
	}()
	t.Cleanup(func() {
		cancel()
		<-finished
		c.Close()
	})
	return c, out, done
}

// receive takes n deliveries, failing after a minute.
func receive(t *testing.T, out <-chan *Delivery, n int) []*Delivery {
	t.Helper()
	var ds []*Delivery
	timeout := time.After(time.Minute)
	for len(ds) < n {
		select {
		case d := <-out:
			ds = append(ds, d)
		case <-timeout:
			t.Fatalf("received %d of %d deliveries", len(ds), n)
		}
	}
	return ds
}

// TestDeliveriesMatchTheClient: the deliveries the consumer decodes itself
// hold what the client's own persistent subscription gives for the same
// events (all but SystemMetadata, which the consumer does not fill), for
// JSON and binary events, with and without metadata, empty data, and a link
// whose event was deleted.
func TestDeliveriesMatchTheClient(t *testing.T) {
	_, client, conf := source(t, esdbtest.Options{})
	ctx := context.Background()
	var all []esdb.EventData
	for i := range 6 {
		e := esdb.EventData{EventID: uuid.New(), EventType: fmt.Sprintf("type-%d", i%3), ContentType: esdb.ContentTypeJson,
			Data: []byte(fmt.Sprintf(`{"n":%d}`, i))}
		switch i {
		case 1:
			e.ContentType, e.Data = esdb.ContentTypeBinary, []byte{0, 1, 2, 0xff}
		case 2:
			e.Metadata = []byte(`{"$correlationId":"c-2","user":"é"}`)
		case 3:
			e.Data = nil
		}
		all = append(all, e)
	}
	for i, e := range all {
		if _, err := client.AppendToStream(ctx, fmt.Sprintf("shape-%d", i%2), esdb.AppendToStreamOptions{}, e); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.AppendToStream(ctx, "shape-gone", esdb.AppendToStreamOptions{}, esdb.EventData{EventType: "t", Data: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.TombstoneStream(ctx, "shape-gone", esdb.TombstoneStreamOptions{}); err != nil {
		t.Fatal(err)
	}
	const stream, n = "$ce-shape", 7
	settings := esdb.SubscriptionSettingsDefault()
	settings.ResolveLinkTos = true
	if err := client.CreatePersistentSubscription(ctx, stream, "client", esdb.PersistentStreamSubscriptionOptions{Settings: &settings, StartFrom: esdb.Start{}}); err != nil {
		t.Fatal(err)
	}
	ps, err := client.SubscribeToPersistentSubscription(ctx, stream, "client", esdb.SubscribeToPersistentSubscriptionOptions{BufferSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	want := map[uuid.UUID]*esdb.EventAppeared{}
	for len(want) < n {
		ev := ps.Recv()
		if ev.SubscriptionDropped != nil {
			t.Fatal(ev.SubscriptionDropped.Error)
		}
		if ev.EventAppeared != nil {
			want[ev.EventAppeared.Event.OriginalEvent().EventID] = ev.EventAppeared
		}
	}

	_, out, _ := run(t, client, conf, stream, "ditto", true)
	unresolved := 0
	for _, d := range receive(t, out, n) {
		w := want[d.Event.OriginalEvent().EventID]
		if w == nil {
			t.Fatalf("delivery of %v, which the client did not receive", d.Event.OriginalEvent().EventID)
		}
		if d.RetryCount != w.RetryCount || !reflect.DeepEqual(d.Event.Commit, w.Event.Commit) {
			t.Errorf("retry count %d, commit %v; the client's %d, %v", d.RetryCount, d.Event.Commit, w.RetryCount, w.Event.Commit)
		}
		sameRecord(t, "event", d.Event.Event, w.Event.Event)
		sameRecord(t, "link", d.Event.Link, w.Event.Link)
		if d.Event.Event == nil {
			unresolved++
		}
	}
	if unresolved != 1 {
		t.Errorf("%d unresolved links, want the one to the deleted stream", unresolved)
	}
}

func sameRecord(t *testing.T, what string, got, want *esdb.RecordedEvent) {
	t.Helper()
	if got == nil || want == nil {
		if got != want {
			t.Errorf("%s: %v, the client's %v", what, got, want)
		}
		return
	}
	g, w := *got, *want
	w.SystemMetadata = nil
	if !bytes.Equal(g.Data, w.Data) || !bytes.Equal(g.UserMetadata, w.UserMetadata) {
		t.Errorf("%s payload %q / %q, the client's %q / %q", what, g.Data, g.UserMetadata, w.Data, w.UserMetadata)
	}
	g.Data, g.UserMetadata, w.Data, w.UserMetadata = nil, nil, nil, nil
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s %+v, the client's %+v", what, g, w)
	}
}

// TestAckAndNack: acked deliveries are not delivered again; nacked ones
// with retry come back with a higher retry count, parked ones do not, and a
// reason that is not valid UTF-8 still parks them, with the bad bytes
// replaced.
func TestAckAndNack(t *testing.T) {
	_, client, conf := source(t, esdbtest.Options{})
	ctx := context.Background()
	for i := range 3 {
		if _, err := client.AppendToStream(ctx, "acks-1", esdb.AppendToStreamOptions{}, esdb.EventData{EventType: "t", Data: []byte(fmt.Sprintf(`{"n":%d}`, i))}); err != nil {
			t.Fatal(err)
		}
	}
	_, out, _ := run(t, client, conf, "$ce-acks", "ditto", true)
	ds := receive(t, out, 3)
	// Settling needs nothing of the decoded event: release it first.
	ids, events := make([]uuid.UUID, len(ds)), make([]uuid.UUID, len(ds))
	for i, d := range ds {
		ids[i], events[i] = d.Event.OriginalEvent().EventID, d.Event.Event.EventID
		if d.OriginalNumber() != d.Event.OriginalEvent().EventNumber || d.OriginalNumber() != uint64(i) {
			t.Errorf("delivery %d: OriginalNumber %d, the link's number %d", i, d.OriginalNumber(), d.Event.OriginalEvent().EventNumber)
		}
		d.Release()
	}
	if err := Ack(ds[:1]); err != nil {
		t.Fatal(err)
	}
	if err := Nack(ds[1:2], esdb.NackActionPark, "bad \xff event"); err != nil {
		t.Fatal(err)
	}
	if err := Nack(ds[2:], esdb.NackActionRetry, "again"); err != nil {
		t.Fatal(err)
	}
	again := receive(t, out, 1)[0]
	if again.Event.OriginalEvent().EventID != ids[2] || again.RetryCount != 1 {
		t.Fatalf("redelivered %v with retry count %d; want %v with 1", again.Event.OriginalEvent().EventID, again.RetryCount, ids[2])
	}
	if err := Ack([]*Delivery{again}); err != nil {
		t.Fatal(err)
	}
	parked, err := client.ReadStream(ctx, "$persistentsubscription-$ce-acks::ditto-parked", esdb.ReadStreamOptions{From: esdb.Start{}, ResolveLinkTos: true}, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer parked.Close()
	ev, err := parked.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ev.OriginalEvent().EventID != ids[1] && (ev.Event == nil || ev.Event.EventID != events[1]) {
		t.Fatalf("parked %v, want %v", ev.OriginalEvent().EventID, ids[1])
	}
	if ev.Link == nil || !strings.Contains(string(ev.Link.UserMetadata), "bad \uFFFD event") {
		t.Fatalf("parked with metadata %+v; want the reason with U+FFFD for the bad byte", ev.Link)
	}
}

// TestMissingGroup: without Create, a missing group stops Run with an error
// naming the setting; with it, the group is created.
func TestMissingGroup(t *testing.T) {
	_, client, conf := source(t, esdbtest.Options{})
	_, _, done := run(t, client, conf, "$ce-none", "ditto", false)
	select {
	case err := <-done:
		if !errors.Is(err, ErrFatal) || !strings.Contains(err.Error(), "DITTO_CREATE_SUBSCRIPTIONS") {
			t.Fatalf("Run: %v; want a fatal error naming DITTO_CREATE_SUBSCRIPTIONS", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run did not stop on a missing group")
	}
	if _, err := client.AppendToStream(context.Background(), "made-1", esdb.AppendToStreamOptions{}, esdb.EventData{EventType: "t", Data: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	_, out, _ := run(t, client, conf, "$ce-made", "ditto", true)
	receive(t, out, 1)
}

// TestFollowsTheLeader: a connection string naming a follower reads from
// the leader the follower's answer names.
func TestFollowsTheLeader(t *testing.T) {
	leader, client, _ := source(t, esdbtest.Options{})
	follower := esdbtest.Start(t, esdbtest.Options{Insecure: true, LeaderAddr: leader.Addr()})
	conf := esdbtest.Config(t, follower.ConnectionString())
	if _, err := client.AppendToStream(context.Background(), "led-1", esdb.AppendToStreamOptions{}, esdb.EventData{EventType: "t", Data: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	// Groups are created through the client, here on the leader.
	c, out, _ := run(t, client, conf, "$ce-led", "ditto", true)
	d := receive(t, out, 1)[0]
	if d.Event.Event.StreamID != "led-1" {
		t.Fatalf("received %+v", d.Event.Event)
	}
	if err := Ack([]*Delivery{d}); err != nil {
		t.Fatal(err)
	}
	conn, err := c.leader.Conn(context.Background())
	if err != nil || conn.Target() != leader.Addr() {
		t.Fatalf("reading from %v (%v); want the leader %s", conn.Target(), err, leader.Addr())
	}
}

// TestDroppedReadKeepsTheConnection: when the source drops one read (its
// group deleted), that read is opened again on the same connection, and the
// other reads on it go on.
func TestDroppedReadKeepsTheConnection(t *testing.T) {
	_, client, conf := source(t, esdbtest.Options{})
	ctx := context.Background()
	appendOne := func(stream string) {
		t.Helper()
		if _, err := client.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{}, esdb.EventData{EventType: "t", Data: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
	}
	appendOne("keep-1")
	appendOne("drop-1")
	c := New(client, []config.Subscription{{Stream: "$ce-keep", Group: "g"}, {Stream: "$ce-drop", Group: "g"}}, metrics.New(), Options{
		BufferSize: 100, Create: true, Config: conf, BackoffInitial: time.Millisecond, BackoffMax: 10 * time.Millisecond,
	}, zerolog.Nop())
	runCtx, cancel := context.WithCancel(ctx)
	out := make(chan *Delivery, 100)
	finished := make(chan struct{})
	go func() {
		c.Run(runCtx, out)
		close(finished)
	}()
	defer func() {
		cancel()
		<-finished
		c.Close()
	}()
	if err := Ack(receive(t, out, 2)); err != nil {
		t.Fatal(err)
	}
	before, err := c.leader.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.DeletePersistentSubscription(ctx, "$ce-drop", "g", esdb.DeletePersistentSubscriptionOptions{}); err != nil {
		t.Fatal(err)
	}
	// The group is created again from the start: drop-1 comes back, and
	// keep-2 arrives on the read that was never dropped.
	appendOne("keep-2")
	got := map[string]bool{}
	for _, d := range receive(t, out, 2) {
		got[d.Event.Event.StreamID] = true
	}
	if !got["drop-1"] || !got["keep-2"] {
		t.Fatalf("received events of %v; want drop-1 again and keep-2", got)
	}
	if after, err := c.leader.Conn(ctx); err != nil || after != before {
		t.Fatalf("the connection was made again (%v)", err)
	}
}

// TestRefusalNamedOnce: a refusal's error names it once, with the source's
// own message.
func TestRefusalNamedOnce(t *testing.T) {
	_, client, conf := source(t, esdbtest.Options{})
	_, _, done := run(t, client, conf, "$ce-nowhere", "g", false)
	err := <-done
	if n := strings.Count(err.Error(), errNotFound.Error()); n != 1 || !strings.Contains(err.Error(), "code = NotFound") {
		t.Fatalf("Run: %v; want %q once, with the source's status", err, errNotFound)
	}
}

// TestSourceConnectionWindow: the connection reads are made on announces
// readWindow as the flow-control window of each read and of the connection,
// as a peer sees it in the connection's first frames.
func TestSourceConnectionWindow(t *testing.T) {
	_, client, _ := source(t, esdbtest.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := New(client, nil, metrics.New(), Options{Config: esdbtest.Config(t, "esdb://"+ln.Addr().String()+"?tls=false")}, zerolog.Nop())
	defer c.Close()
	conn, err := c.leader.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	conn.Connect()

	if err := ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	if err := peer.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(peer, preface); err != nil || string(preface) != http2.ClientPreface {
		t.Fatalf("preface %q, %v", preface, err)
	}
	fr := http2.NewFramer(peer, peer)
	streamWindow, connWindow := uint32(0), uint32(65535) // HTTP/2's initial connection window
	for range 2 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			streamWindow, _ = f.Value(http2.SettingInitialWindowSize)
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connWindow += f.Increment
			}
		}
	}
	if streamWindow != readWindow || connWindow != readWindow {
		t.Fatalf("windows announced: %d per read, %d for the connection; want %d for both", streamWindow, connWindow, readWindow)
	}
}
