package main

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"fmt"
	"strconv"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
)

// category is the category of every benchmark stream: streams are
// bench-0, bench-1, …, and ditto reads $ce-bench.
const category = "bench"

// workload is a deterministic set of events: event i goes to stream
// bench-(i mod streams) as its event number i div streams, so the category
// stream interleaves the streams round-robin (the hard case for batching:
// consecutive events of $ce-bench belong to different streams).
type workload struct {
	events  int
	streams int
	base    uuid.UUID // random per workload; event ids derive from it
	// twoTypes gives every other event of each stream (odd numbers)
	// otherType, for scenario p's filter.
	twoTypes bool
}

func newWorkload(events, streams int) workload {
	w := workload{events: events, streams: max(1, min(streams, events))}
	_, _ = crand.Read(w.base[:])
	w.base[6] = w.base[6]&0x0f | 0x40 // version 4
	return w
}

func (w workload) stream(i int) string { return category + "-" + strconv.Itoa(i%w.streams) }
func (w workload) number(i int) uint64 { return uint64(i / w.streams) }

// perStream is the number of events of stream s.
func (w workload) perStream(s int) int {
	n := w.events / w.streams
	if s < w.events%w.streams {
		n++
	}
	return n
}

// indexOf is the event index of event number n of stream s.
func (w workload) indexOf(s int, n int) int { return n*w.streams + s }

// id is event i's id: the workload's random prefix with i in the low 56
// bits, so a receiver can tell the index back from the id (indexFromID).
func (w workload) id(i int) uuid.UUID {
	id := w.base
	binary.BigEndian.PutUint64(id[8:], uint64(i))
	id[8] = 0x80 // RFC 4122 variant; i < 2^56
	return id
}

// indexFromID returns the index of an id made by w.id, or -1.
func (w workload) indexFromID(id uuid.UUID) int {
	if [8]byte(id[:8]) != [8]byte(w.base[:8]) || id[8] != 0x80 {
		return -1
	}
	i := binary.BigEndian.Uint64(id[8:]) & (1<<56 - 1)
	if i >= uint64(w.events) {
		return -1
	}
	return int(i)
}

// eventType is the type of every benchmark event; with twoTypes, of the
// even-numbered ones, and otherType of the odd-numbered.
const (
	eventType = "BenchEventHappened"
	otherType = "BenchEventNoted"
)

func (w workload) eventType(i int) string {
	if w.twoTypes && w.number(i)%2 == 1 {
		return otherType
	}
	return eventType
}

// ofEventType counts the events of type eventType.
func (w workload) ofEventType() int {
	n := 0
	for i := 0; i < w.events; i++ {
		if w.eventType(i) == eventType {
			n++
		}
	}
	return n
}

// data and metadata are about 200 and 60 bytes of JSON, the size of a
// typical domain event.
func (w workload) data(i int) []byte {
	return fmt.Appendf(nil, `{"customerId":"%s","sequence":%d,"amountCents":%d,"currency":"EUR","channel":"web","note":"a benchmark event of a typical size, about two hundred bytes"}`,
		w.stream(i), w.number(i), 1000+i%9000)
}

func (w workload) metadata(i int) []byte {
	return fmt.Appendf(nil, `{"$correlationId":"%s","producer":"ditto-bench"}`, w.id(i))
}

func (w workload) proposed(i int) esdbtest.ProposedEvent {
	return esdbtest.ProposedEvent{ID: w.id(i), Type: w.eventType(i), IsJSON: true, Data: w.data(i), Metadata: w.metadata(i)}
}

func (w workload) eventData(i int) esdb.EventData {
	return esdb.EventData{EventID: w.id(i), EventType: w.eventType(i), ContentType: esdb.ContentTypeJson, Data: w.data(i), Metadata: w.metadata(i)}
}

// seed appends events [0, w.events) to the store directly (not through
// gRPC: seeding is not what is measured), one append per event in index
// order, so $ce-bench interleaves the streams. It checks ctx every 1,000
// events.
func seed(ctx context.Context, store *esdbtest.Store, w workload) error {
	for i := 0; i < w.events; i++ {
		if i%1000 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		if _, err := store.Append(w.stream(i), esdbtest.Expected{Kind: esdbtest.ExpectAny}, []esdbtest.ProposedEvent{w.proposed(i)}); err != nil {
			return fmt.Errorf("seeding event %d: %w", i, err)
		}
	}
	return nil
}

// newClient connects an esdb client without log output.
func newClient(cs string) (*esdb.Client, error) {
	conf, err := esdb.ParseConnectionString(cs)
	if err != nil {
		return nil, err
	}
	conf.Logger = func(esdb.LogLevel, string, ...any) {}
	return esdb.NewClient(conf)
}

// createGroup creates a persistent subscription group on $ce-bench the way
// ditto needs it: links resolved, Pinned, from the start; other settings
// are the client's defaults.
func createGroup(ctx context.Context, c *esdb.Client, group string) error {
	settings := esdb.SubscriptionSettingsDefault()
	settings.ResolveLinkTos = true
	settings.ConsumerStrategyName = esdb.ConsumerStrategyPinned
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.CreatePersistentSubscription(ctx, "$ce-"+category, group,
		esdb.PersistentStreamSubscriptionOptions{Settings: &settings, StartFrom: esdb.Start{}}); err != nil {
		return fmt.Errorf("creating group $ce-%s::%s: %w", category, group, err)
	}
	return nil
}

// expectedBefore is the expected revision of an append of event number n.
func expectedBefore(n uint64) esdb.ExpectedRevision {
	if n == 0 {
		return esdb.NoStream{}
	}
	return esdb.Revision(n - 1)
}
