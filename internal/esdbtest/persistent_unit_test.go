package esdbtest

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// psWaitFor polls cond until it holds or 15 s pass; tests wait on
// conditions, never on bare sleeps.
func psWaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func psTestConsumer(id uint64, size, inFlight int) *psConsumer {
	c := newConsumer(id, "test", size)
	c.inFlight = inFlight
	return c
}

func psMsgOf(stream string) *psMessage {
	return &psMessage{ev: ResolvedRecord{Event: &Record{Stream: stream, Type: "t"}}}
}

func TestPSRoundRobinSpreadsAndRotates(t *testing.T) {
	rr := newStrategy(strategyRoundRobin)
	cs := []*psConsumer{psTestConsumer(1, 2, 0), psTestConsumer(2, 2, 0), psTestConsumer(3, 2, 0)}
	for _, c := range cs {
		rr.add(c)
	}
	var got []uint64
	for i := 0; i < 6; i++ {
		c, r := rr.pick(psMsgOf("s"))
		if r != pushed {
			t.Fatalf("pick %d: result %v", i, r)
		}
		c.inFlight++
		got = append(got, c.id)
	}
	if want := []uint64{1, 2, 3, 1, 2, 3}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("order = %v, want %v", got, want)
	}
	if _, r := rr.pick(psMsgOf("s")); r != noCapacity {
		t.Fatalf("all full: result %v, want noCapacity", r)
	}
}

func TestPSDispatchToSingleFillsHeadFirst(t *testing.T) {
	d := newStrategy(strategyDispatchToSingle)
	a, b := psTestConsumer(1, 3, 0), psTestConsumer(2, 3, 0)
	d.add(a)
	d.add(b)
	var got []uint64
	for i := 0; i < 6; i++ {
		c, r := d.pick(psMsgOf("s"))
		if r != pushed {
			t.Fatalf("pick %d: result %v", i, r)
		}
		c.inFlight++
		got = append(got, c.id)
	}
	if want := []uint64{1, 1, 1, 2, 2, 2}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("order = %v, want %v", got, want)
	}
}

func TestPSPinnedKeepsStreamOnOneConsumerAndSkipsWhenFull(t *testing.T) {
	p := newStrategy(strategyPinned)
	a, b := psTestConsumer(1, 1000, 0), psTestConsumer(2, 1000, 0)
	p.add(a)
	p.add(b)
	owner := map[string]*psConsumer{}
	for i := 0; i < 200; i++ {
		s := fmt.Sprintf("order-%d", i%20)
		c, r := p.pick(psMsgOf(s))
		if r != pushed {
			t.Fatalf("pick %d: %v", i, r)
		}
		if prev, ok := owner[s]; ok && prev != c {
			t.Fatalf("stream %s moved from consumer %d to %d", s, prev.id, c.id)
		}
		owner[s] = c
		c.inFlight++
	}
	if a.inFlight == 0 || b.inFlight == 0 {
		t.Fatalf("pinned did not spread 20 streams: a=%d b=%d", a.inFlight, b.inFlight)
	}
	// Fill the owner of order-0: its messages are skipped, not rerouted.
	full := owner["order-0"]
	full.inFlight = full.bufferSize
	if c, r := p.pick(psMsgOf("order-0")); r != skipped {
		t.Fatalf("full owner: got consumer %v result %v, want skipped", c, r)
	}
}

func TestPSPinnedSourceOfUnresolvedLinkIsTargetStream(t *testing.T) {
	link := &Record{Stream: "$ce-order", Type: "$>", Data: []byte("3@order-7")}
	if got := pinnedSource(ResolvedRecord{Link: link}, false); got != "order-7" {
		t.Fatalf("unresolved link source = %q", got)
	}
	if got := pinnedSource(ResolvedRecord{Event: link}, false); got != "order-7" {
		t.Fatalf("raw link source = %q", got)
	}
	ev := &Record{Stream: "order-7", Type: "x", Metadata: []byte(`{"$correlationId":"c-1"}`)}
	if got := pinnedSource(ResolvedRecord{Event: ev, Link: link}, true); got != "c-1" {
		t.Fatalf("correlation source = %q", got)
	}
	if got := pinnedSource(ResolvedRecord{Event: ev, Link: link}, false); got != "order-7" {
		t.Fatalf("resolved source = %q", got)
	}
}

func TestPSSettingsValidate(t *testing.T) {
	ok := func() *psSettings { return defaultPSSettings("s", "g") }
	cases := []struct {
		name   string
		mutate func(*psSettings)
		errHas string
	}{
		{"defaults", func(*psSettings) {}, ""},
		{"unknown strategy", func(s *psSettings) { s.Strategy = "Fancy" }, "strategy"},
		{"batch >= history", func(s *psSettings) { s.ReadBatchSize = 500 }, "read batch size"},
		{"start < -1", func(s *psSettings) { s.StartRevision = -2 }, "start revision"},
		{"empty stream", func(s *psSettings) { s.Stream = "" }, "stream name"},
		{"all prepare > commit", func(s *psSettings) { s.Stream, s.StartCommit, s.StartPrepare = allStream, 5, 6 }, "prepare"},
		{"all past head", func(s *psSettings) { s.Stream, s.StartCommit, s.StartPrepare = allStream, 500, 500 }, "after the last"},
		{"all half negative", func(s *psSettings) { s.Stream, s.StartCommit, s.StartPrepare = allStream, -1, 0 }, "invalid start"},
		{"all end", func(s *psSettings) { s.Stream, s.StartCommit, s.StartPrepare = allStream, -1, -1 }, ""},
		{"bad regex", func(s *psSettings) { s.Stream, s.Filter = allStream, &psFilter{Regex: "("} }, "regex"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := ok()
			tc.mutate(s)
			err := s.validate(100)
			switch {
			case tc.errHas == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.errHas != "" && (err == nil || !strings.Contains(err.Error(), tc.errHas)):
				t.Fatalf("error %v, want one mentioning %q", err, tc.errHas)
			}
		})
	}
}

func TestPSHTTPSettingsDecode(t *testing.T) {
	s, err := settingsFromHTTP([]byte(`{"resolveLinktos":true,"startFrom":0,"namedConsumerStrategy":"Pinned","readBatchSize":5,"bufferSize":50}`), "s", "g")
	if err != nil {
		t.Fatal(err)
	}
	if !s.ResolveLinks || s.StartRevision != 0 || s.Strategy != strategyPinned || s.ReadBatchSize != 5 || s.HistoryBufferSize != 50 || s.MaxRetryCount != 10 {
		t.Fatalf("decoded %+v", s)
	}
	if _, err := settingsFromHTTP([]byte(`{"startFrom":"x"}`), "s", "g"); err == nil {
		t.Fatal("bad JSON accepted")
	}
}

// --- subscription state machine against a real in-memory store ---

func psNewStore(t testing.TB) *Store {
	t.Helper()
	st, err := NewStore("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func psAppendN(t testing.TB, st *Store, stream string, n int) {
	t.Helper()
	evs := make([]ProposedEvent, n)
	for i := range evs {
		evs[i] = ProposedEvent{ID: uuid.New(), Type: "test", IsJSON: true, Data: []byte(`{}`)}
	}
	if _, err := st.Append(stream, Expected{Kind: ExpectAny}, evs); err != nil {
		t.Fatal(err)
	}
}

// psOrdersState is the state of group g reading n events of "orders" from
// its start, without the subscription goroutine (newSubState).
func psOrdersState(t testing.TB, n int) *psSub {
	t.Helper()
	st := psNewStore(t)
	psAppendN(t, st, "orders", n)
	set := defaultPSSettings("orders", "g")
	set.StartRevision = 0
	if err := set.validate(st.HeadPosition()); err != nil {
		t.Fatal(err)
	}
	return newSubState(st, set)
}

func psStartSub(t testing.TB, st *Store, s *psSettings) *psSub {
	t.Helper()
	if err := s.validate(st.HeadPosition()); err != nil {
		t.Fatal(err)
	}
	sub := newSub(st, s)
	t.Cleanup(func() { sub.shutdown(false) })
	return sub
}

// psRecv collects n messages from c (bounded by psWaitFor's deadline).
func psRecv(t testing.TB, c *psConsumer, n int) []sendItem {
	t.Helper()
	var got []sendItem
	psWaitFor(t, fmt.Sprintf("%d messages", n), func() bool {
		got = append(got, c.take(nil)...)
		return len(got) >= n
	})
	if len(got) > n {
		t.Fatalf("got %d messages, want %d", len(got), n)
	}
	return got
}

func psIDs(items []sendItem) []uuid.UUID {
	ids := make([]uuid.UUID, len(items))
	for i, it := range items {
		ids[i] = it.ev.Original().ID
	}
	return ids
}

func TestPSSubBufferLimitAckAndCheckpoint(t *testing.T) {
	st := psNewStore(t)
	psAppendN(t, st, "orders", 10)
	s := defaultPSSettings("orders", "g")
	s.StartRevision, s.MaxCheckpointCount, s.MinCheckpointCount = 0, 1, 1
	sub := psStartSub(t, st, s)
	c, err := sub.connect("u", 4)
	if err != nil {
		t.Fatal(err)
	}
	first := psRecv(t, c, 4)
	for i, it := range first {
		if it.ev.Event.Number != int64(i) || it.retry != 0 {
			t.Fatalf("message %d: number %d retry %d", i, it.ev.Event.Number, it.retry)
		}
	}
	sub.post(func() { sub.ack(psIDs(first)) })
	rest := psRecv(t, c, 4)
	sub.post(func() { sub.ack(psIDs(rest)) })
	last := psRecv(t, c, 2)
	sub.post(func() { sub.ack(psIDs(last)) })
	psWaitFor(t, "checkpoint 9", func() bool {
		cp, ok := sub.loadCheckpoint()
		return ok && cp == 9
	})
}

func TestPSSubRetryCountsThenParkAndReplay(t *testing.T) {
	st := psNewStore(t)
	psAppendN(t, st, "orders", 1)
	s := defaultPSSettings("orders", "g")
	s.StartRevision, s.MaxRetryCount = 0, 2
	sub := psStartSub(t, st, s)
	c, _ := sub.connect("u", 10)
	for want := int32(0); want <= 2; want++ {
		got := psRecv(t, c, 1)
		if got[0].retry != want {
			t.Fatalf("retry count %d, want %d", got[0].retry, want)
		}
		sub.post(func() { sub.nack(psIDs(got), nackRetry, "again") })
	}
	parked := s.parkedStream()
	var recs []ResolvedRecord
	psWaitFor(t, "parked message", func() bool {
		recs, _ = st.ReadStream(parked, 0, true, 10, false)
		return len(recs) == 1
	})
	p := recs[0].Event
	if p.Type != "$>" || string(p.Data) != "0@orders" || p.IsJSON {
		t.Fatalf("parked record %+v", p)
	}
	var md struct {
		Reason string `json:"reason"`
		N      int64  `json:"subscriptionEventNumber"`
	}
	if err := json.Unmarshal(p.Metadata, &md); err != nil || md.Reason != "Reached retry count of 2" || md.N != 0 {
		t.Fatalf("parked metadata %s (%v)", p.Metadata, err)
	}

	if err := sub.call(func() { _ = sub.startReplay(-1) }); err != nil {
		t.Fatal(err)
	}
	got := psRecv(t, c, 1)
	if got[0].retry != 0 || got[0].ev.Link == nil || got[0].ev.Link.ID != p.ID || got[0].ev.Event.Stream != "orders" {
		t.Fatalf("replayed %+v", got[0])
	}
	sub.post(func() { sub.ack([]uuid.UUID{p.ID}) })
	psWaitFor(t, "parked stream hidden", func() bool {
		var n int64
		_ = sub.call(func() { n = sub.parkedCount() })
		return n == 0
	})
}

func TestPSSubNackParkReason(t *testing.T) {
	st := psNewStore(t)
	psAppendN(t, st, "orders", 1)
	s := defaultPSSettings("orders", "g")
	s.StartRevision = 0
	sub := psStartSub(t, st, s)
	c, _ := sub.connect("u", 10)
	got := psRecv(t, c, 1)
	sub.post(func() { sub.nack(psIDs(got), nackPark, "because") })
	var recs []ResolvedRecord
	psWaitFor(t, "parked message", func() bool {
		recs, _ = st.ReadStream(s.parkedStream(), 0, true, 10, false)
		return len(recs) == 1
	})
	var md struct{ Reason string }
	_ = json.Unmarshal(recs[0].Event.Metadata, &md)
	if md.Reason != "Client explicitly NAK'ed message.\nbecause" {
		t.Fatalf("reason %q", md.Reason)
	}
}

func TestPSSubDisconnectRequeuesToOthers(t *testing.T) {
	st := psNewStore(t)
	psAppendN(t, st, "orders", 3)
	s := defaultPSSettings("orders", "g")
	s.StartRevision = 0
	sub := psStartSub(t, st, s)
	a, _ := sub.connect("a", 10)
	got := psRecv(t, a, 3)
	b, _ := sub.connect("b", 10)
	sub.post(func() { sub.disconnect(a) })
	again := psRecv(t, b, 3)
	for i, it := range again {
		if it.retry != 1 || it.ev.Event.ID != got[i].ev.Event.ID {
			t.Fatalf("requeued %d: retry %d id %v", i, it.retry, it.ev.Event.ID)
		}
	}
}

func TestPSSubMessageTimeoutRetries(t *testing.T) {
	st := psNewStore(t)
	psAppendN(t, st, "orders", 1)
	s := defaultPSSettings("orders", "g")
	s.StartRevision, s.MessageTimeoutMs = 0, 0
	sub := psStartSub(t, st, s)
	c, _ := sub.connect("u", 10)
	first := psRecv(t, c, 1)
	second := psRecv(t, c, 1) // after the next 1 s tick
	if first[0].retry != 0 || second[0].retry != 1 {
		t.Fatalf("retry counts %d, %d", first[0].retry, second[0].retry)
	}
}

func TestPSSubEventsBeforeConsumerAndLiveEvents(t *testing.T) {
	st := psNewStore(t)
	psAppendN(t, st, "orders", 2)
	s := defaultPSSettings("orders", "g") // start at end
	sub := psStartSub(t, st, s)
	psAppendN(t, st, "orders", 2) // after creation, before any consumer
	c, _ := sub.connect("u", 10)
	got := psRecv(t, c, 2)
	if got[0].ev.Event.Number != 2 || got[1].ev.Event.Number != 3 {
		t.Fatalf("numbers %d, %d", got[0].ev.Event.Number, got[1].ev.Event.Number)
	}
	psAppendN(t, st, "orders", 1)
	if live := psRecv(t, c, 1); live[0].ev.Event.Number != 4 {
		t.Fatalf("live number %d", live[0].ev.Event.Number)
	}
}

func TestPSSubMaxSubscribers(t *testing.T) {
	st := psNewStore(t)
	s := defaultPSSettings("orders", "g")
	s.MaxSubscriberCount = 1
	sub := psStartSub(t, st, s)
	if _, err := sub.connect("a", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.connect("b", 1); err != errMaxSubscribers {
		t.Fatalf("second consumer: %v, want errMaxSubscribers", err)
	}
}

// The checkpoint never passes an unacked message: acks of 1..4 without 0
// write nothing, and the ack of 0 moves it to 4.
func TestPSSubCheckpointWaitsForOldestUnacked(t *testing.T) {
	st := psNewStore(t)
	psAppendN(t, st, "orders", 5)
	s := defaultPSSettings("orders", "g")
	s.StartRevision, s.MinCheckpointCount, s.MaxCheckpointCount = 0, 1, 1
	sub := psStartSub(t, st, s)
	c, _ := sub.connect("u", 10)
	got := psRecv(t, c, 5)
	if err := sub.call(func() { sub.ack(psIDs(got[1:])); sub.maybeCheckpoint(false) }); err != nil {
		t.Fatal(err)
	}
	if _, ok := sub.loadCheckpoint(); ok {
		t.Fatal("checkpoint written past the unacked event 0")
	}
	if err := sub.call(func() { sub.ack(psIDs(got[:1])); sub.maybeCheckpoint(false) }); err != nil {
		t.Fatal(err)
	}
	if cp, ok := sub.loadCheckpoint(); !ok || cp != 4 {
		t.Fatalf("checkpoint %d (%v), want 4", cp, ok)
	}
}

// ReplayParked with stop_at replays only parked events numbered below it.
func TestPSSubReplayParkedStopAt(t *testing.T) {
	st := psNewStore(t)
	psAppendN(t, st, "orders", 3)
	s := defaultPSSettings("orders", "g")
	s.StartRevision = 0
	sub := psStartSub(t, st, s)
	c, _ := sub.connect("u", 10)
	got := psRecv(t, c, 3)
	sub.post(func() { sub.nack(psIDs(got), nackPark, "x") })
	psWaitFor(t, "3 parked", func() bool { return st.LastEventNumber(s.parkedStream()) == 2 })
	if err := sub.call(func() { _ = sub.startReplay(2) }); err != nil {
		t.Fatal(err)
	}
	replayed := psRecv(t, c, 2)
	for i, it := range replayed {
		if it.ev.Event.Number != int64(i) || it.ev.Link.Number != int64(i) || it.retry != 0 {
			t.Fatalf("replayed %d: event %d link %d retry %d", i, it.ev.Event.Number, it.ev.Link.Number, it.retry)
		}
	}
	var parked int64
	psWaitFor(t, "one parked message left", func() bool {
		_ = sub.call(func() { parked = sub.parkedCount() })
		return parked == 1
	})
}

// A consumer with room for more than the subscription's read-ahead (history
// plus live buffer, 1,000 here) gets it all without acking anything, as the
// server reads the next batch as soon as it has pushed one. Before, the
// subscription read one buffer's worth per ack, so a consumer that had
// acked a lot at once got at most 1,000 until the next ack. The tick that
// also woke it is made too rare to matter here.
func TestPSSubReadsOnWhileConsumersHaveRoom(t *testing.T) {
	const events = 2500
	s := psOrdersState(t, events)
	if s.settings.bufferCap() >= events {
		t.Fatalf("read-ahead %d must be below the %d events", s.settings.bufferCap(), events)
	}
	s.tickEvery = time.Hour
	go s.run()
	t.Cleanup(func() { s.shutdown(false) })
	c, err := s.connect("admin", 2*events)
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	timeout := time.NewTimer(psTimeout)
	defer timeout.Stop()
	for got < events {
		select {
		case <-c.notify:
			got += len(c.take(nil))
		case <-timeout.C:
			t.Fatalf("%d of %d events delivered without acks, then nothing for %s", got, events, psTimeout)
		}
	}
	if got != events {
		t.Fatalf("delivered %d, want %d", got, events)
	}
}

// bucketOf is hash/fnv's 32-bit FNV-1a, so pinned consumers own the same
// streams as before it was written out.
func TestPSBucketOfIsFNV1a(t *testing.T) {
	for _, source := range []string{"", "a", "bench-17", "$ce-order", "order-1-x", "ünïcødé-ström", strings.Repeat("x", 300)} {
		h := fnv.New32a()
		h.Write([]byte(source))
		if got, want := bucketOf(source), int(h.Sum32()%pinnedBuckets); got != want {
			t.Errorf("bucketOf(%q) = %d, want %d", source, got, want)
		}
	}
}
