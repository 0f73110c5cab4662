package esdbtest

import (
	"bytes"
	"encoding/json"
)

// pinnedBuckets is the number of hash buckets Pinned strategies spread
// source streams over (the real server's value).
const pinnedBuckets = 1024

// pushResult is a strategy's verdict for one message.
type pushResult int

const (
	// pushed: deliver to the returned consumer.
	pushed pushResult = iota
	// skipped: the message's pinned consumer is full; move the message to the
	// end of the retry list, never to another consumer.
	skipped
	// noCapacity: no consumer can take anything now; stop pushing.
	noCapacity
)

// psStrategy chooses consumers. Strategies are owned by the subscription
// goroutine and never locked; they only read consumer.inFlight/bufferSize.
type psStrategy interface {
	add(c *psConsumer)
	remove(c *psConsumer)
	// pick chooses the consumer for m and accounts for it (queue rotation);
	// the caller delivers the message when the result is pushed.
	pick(m *psMessage) (*psConsumer, pushResult)
}

func newStrategy(name string) psStrategy {
	switch name {
	case strategyDispatchToSingle:
		return &dispatchToSingle{}
	case strategyPinned:
		return newPinned(false)
	case strategyPinnedByCorrelation:
		return newPinned(true)
	}
	return &roundRobin{}
}

// consumerQueue is the ordered list of consumers that RoundRobin and
// DispatchToSingle rotate.
type consumerQueue []*psConsumer

func (q *consumerQueue) add(c *psConsumer) { *q = append(*q, c) }

func (q *consumerQueue) remove(c *psConsumer) {
	for i, x := range *q {
		if x == c {
			*q = append((*q)[:i], (*q)[i+1:]...)
			return
		}
	}
}

// toBack moves the consumer at index i to the back of the queue.
func (q *consumerQueue) toBack(i int) {
	c := (*q)[i]
	copy((*q)[i:], (*q)[i+1:])
	(*q)[len(*q)-1] = c
}

// roundRobin gives each message to the first consumer in queue order with a
// free slot, then sends that consumer to the back of the queue.
type roundRobin struct{ q consumerQueue }

func (r *roundRobin) add(c *psConsumer)    { r.q.add(c) }
func (r *roundRobin) remove(c *psConsumer) { r.q.remove(c) }

func (r *roundRobin) pick(*psMessage) (*psConsumer, pushResult) {
	for i, c := range r.q {
		if c.hasCapacity() {
			r.q.toBack(i)
			return c, pushed
		}
	}
	return nil, noCapacity
}

// dispatchToSingle fills the head consumer until it is full, then rotates to
// the next one.
type dispatchToSingle struct{ q consumerQueue }

func (d *dispatchToSingle) add(c *psConsumer)    { d.q.add(c) }
func (d *dispatchToSingle) remove(c *psConsumer) { d.q.remove(c) }

func (d *dispatchToSingle) pick(*psMessage) (*psConsumer, pushResult) {
	for range d.q {
		if c := d.q[0]; c.hasCapacity() {
			return c, pushed
		}
		d.q.toBack(0)
	}
	return nil, noCapacity
}

// pinned keeps every message of one source stream (or correlation id) on one
// consumer: a bucket of the source's hash is owned by one consumer until it
// disconnects. A full owner means the message waits (skipped), which keeps
// per-stream order across consumers.
type pinned struct {
	byCorrelation bool
	consumers     []*psConsumer
	owner         [pinnedBuckets]*psConsumer
	owned         map[*psConsumer]int // buckets per consumer
}

func newPinned(byCorrelation bool) *pinned {
	return &pinned{byCorrelation: byCorrelation, owned: map[*psConsumer]int{}}
}

// add registers c and hands it buckets from consumers that own more than
// their fair share, so a new consumer gets work without waiting for one to
// leave.
func (p *pinned) add(c *psConsumer) {
	p.consumers = append(p.consumers, c)
	p.owned[c] = 0
	assigned := 0
	for _, n := range p.owned {
		assigned += n
	}
	fair := assigned / len(p.consumers)
	for b := 0; b < pinnedBuckets && p.owned[c] < fair; b++ {
		if o := p.owner[b]; o != nil && p.owned[o] > fair {
			p.owned[o]--
			p.owner[b] = c
			p.owned[c]++
		}
	}
}

// remove orphans c's buckets; they are reassigned on next use.
func (p *pinned) remove(c *psConsumer) {
	for i, x := range p.consumers {
		if x == c {
			p.consumers = append(p.consumers[:i], p.consumers[i+1:]...)
			break
		}
	}
	delete(p.owned, c)
	for b := range p.owner {
		if p.owner[b] == c {
			p.owner[b] = nil
		}
	}
}

func (p *pinned) pick(m *psMessage) (*psConsumer, pushResult) {
	capacity := false
	for _, c := range p.consumers {
		if c.hasCapacity() {
			capacity = true
			break
		}
	}
	if !capacity {
		return nil, noCapacity
	}
	b := bucketOf(pinnedSource(m.ev, p.byCorrelation))
	c := p.owner[b]
	if c == nil {
		// Orphaned or never used: the consumer with the fewest buckets.
		for _, x := range p.consumers {
			if c == nil || p.owned[x] < p.owned[c] {
				c = x
			}
		}
		p.owner[b] = c
		p.owned[c]++
	}
	if !c.hasCapacity() {
		return nil, skipped
	}
	return c, pushed
}

// bucketOf hashes a source id into a pinned bucket. The real server uses an
// XXHash32 variant; any stable hash gives the same guarantees. This one is
// 32-bit FNV-1a (hash/fnv's New32a), written out: through the hash.Hash32
// interface it cost as much as the rest of a pick.
func bucketOf(source string) int {
	h := uint32(fnv32Offset)
	for i := 0; i < len(source); i++ {
		h = (h ^ uint32(source[i])) * fnv32Prime
	}
	return int(h % pinnedBuckets)
}

// The 32-bit FNV parameters.
const (
	fnv32Offset = 2166136261
	fnv32Prime  = 16777619
)

// pinnedSource is the id a pinned strategy hashes: the stream of the event
// (the link when unresolved), where an unresolved $> link names its target
// stream after the first '@' of its data; for PinnedByCorrelation the
// top-level "$correlationId" of the event's metadata comes first.
func pinnedSource(ev ResolvedRecord, byCorrelation bool) string {
	rec := ev.Event
	if rec == nil {
		rec = ev.Link
	}
	if rec == nil {
		return ""
	}
	if byCorrelation && len(rec.Metadata) > 0 {
		var md struct {
			CorrelationID *string `json:"$correlationId"`
		}
		if json.Unmarshal(rec.Metadata, &md) == nil && md.CorrelationID != nil {
			return *md.CorrelationID
		}
	}
	if rec.Type == "$>" {
		if i := bytes.IndexByte(rec.Data, '@'); i >= 0 {
			return string(rec.Data[i+1:])
		}
	}
	return rec.Stream
}
