package esdbtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
)

// Ownership and locking of a persistent subscription (psSub):
//
//   - One goroutine (run) owns all mutable subscription state: the read
//     position, the buffer, the retry list, the outstanding map, the
//     consumers' in-flight counters and the strategy. Nothing of it is
//     locked; other goroutines act on it only by sending closures through
//     reqs (call waits for the result, post does not).
//   - Each consumer (a Read RPC) has an outbound queue guarded by
//     psConsumer.mu. The subscription goroutine appends to it and never
//     blocks on a slow client; the RPC handler goroutine drains it and is the
//     only caller of stream.Send. A consumer never holds more than its
//     buffer size of unacked messages, so the queue stays small.
//   - The persistentService mutex guards only the map of subscriptions; it
//     may be held while stopping a subscription because the subscription
//     goroutine never takes it.
//   - Store calls are made from the subscription goroutine; the store is
//     safe for concurrent use and never calls back.

// errSubGone: the subscription stopped (deleted, updated or restarted)
// between the lookup and the request.
var errSubGone = errors.New("persistent subscription stopped")

// errMaxSubscribers: max_subscriber_count consumers are already connected.
var errMaxSubscribers = errors.New("maximum subscribers reached")

// errReplayRunning: a parked-message replay is already in progress.
var errReplayRunning = errors.New("a replay of parked messages is already running")

// psMessage is one event on its way to a consumer.
type psMessage struct {
	ev ResolvedRecord
	id uuid.UUID // ack id: the original (link if present) record's id
	// seq orders messages and feeds the checkpoint: the original record's
	// event number (stream) or log position ($all).
	seq        int64
	retryCount int32
	// replayed marks a parked message being replayed: it sits at the end of
	// the retry list and never moves the checkpoint.
	replayed bool
	// settled: the message left the outstanding table and the retry list
	// for good (acked, skipped, parked, or its outstanding entry was taken
	// by a later message with the same id). Only non-replayed messages use
	// it.
	settled bool
	// While the message is in flight: the consumer it was delivered to and
	// when it times out. A message is in flight at most once at a time, so
	// these live in the message rather than in an entry of their own.
	c        *psConsumer
	deadline time.Time
}

// sendItem is a message queued for a consumer's RPC handler.
type sendItem struct {
	ev    ResolvedRecord
	retry int32
}

// psConsumer is one connected Read RPC.
type psConsumer struct {
	id         uint64
	user       string
	bufferSize int
	inFlight   int   // owned by the subscription goroutine
	total      int64 // messages delivered; owned by the subscription goroutine

	// pending collects the messages of one push burst for this consumer;
	// owned by the subscription goroutine.
	pending []sendItem

	mu     sync.Mutex
	queue  []sendItem // guarded by mu
	notify chan struct{}
	// dropped is closed by the subscription goroutine when the server drops
	// the consumer (update, delete, restart, shutdown).
	dropped chan struct{}
}

func newConsumer(id uint64, user string, bufferSize int) *psConsumer {
	return &psConsumer{
		id: id, user: user, bufferSize: bufferSize,
		notify:  make(chan struct{}, 1),
		dropped: make(chan struct{}),
	}
}

func (c *psConsumer) hasCapacity() bool { return c.inFlight < c.bufferSize }

// enqueue hands messages to the RPC handler without blocking.
func (c *psConsumer) enqueue(items []sendItem) {
	c.mu.Lock()
	c.queue = append(c.queue, items...)
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// take removes and returns everything queued; buf is reused as the next
// queue so that steady-state delivery does not allocate.
func (c *psConsumer) take(buf []sendItem) []sendItem {
	c.mu.Lock()
	items := c.queue
	c.queue = buf[:0]
	c.mu.Unlock()
	return items
}

// psSub is one running persistent subscription. See the ownership rules at
// the top of this file.
type psSub struct {
	settings *psSettings
	store    *Store

	reqs chan func()
	stop chan psStop
	done chan struct{}

	// State below is owned by the run goroutine.
	strategy    psStrategy
	consumers   []*psConsumer
	nextID      uint64
	buffer      []*psMessage // read, not yet delivered, ascending seq
	head        int          // buffer[head:] is live
	retry       []*psMessage
	outstanding psOutstanding // messages in flight, by ack id
	touched     uintptr       // sums what outstanding.touch read, so the reads stay
	// handed lists the non-replayed messages taken from the buffer (to a
	// consumer or the retry list), in seq order since the buffer is; its
	// unsettled ones are exactly the non-replayed messages in outstanding
	// and retry, so the first unsettled one is the lowest the checkpoint
	// must wait for, found without a scan (persistent_checkpoint.go).
	handed     []*psMessage
	handedHead int // handed[:handedHead] are dropped (nil)
	handedLive int // unsettled messages in handed

	nextNumber  int64  // stream: next event number to read
	nextPos     uint64 // $all: next position to read
	ended       bool   // stream tombstoned: nothing more to read
	lastReadSeq int64  // seq of the last record considered; -1 if none
	caughtUp    bool
	changed     <-chan struct{} // store.Changed() taken before the read that caught up

	// lastKnown is GetInfo's last_known_event_position: the last event
	// read into the buffers since the subscription (re)started, -1 before
	// the first read. Like the real server (PersistentSubscriptionStats
	// SetLastKnownEventPosition, called for each batch read and each live
	// event), it is not the stream's end while the group is behind.
	lastKnown int64

	hasCheckpoint   bool
	lastCheckpoint  int64
	sinceCheckpoint int
	checkpointAt    time.Time
	parkedACL       bool // parked stream metadata known to be written
	replay          *psReplay
	totalItems      int64 // messages delivered, for GetInfo
	now             time.Time
	tickEvery       time.Duration // how often message timeouts are checked
}

// psStop says how a subscription ends.
type psStop struct {
	flush bool // write a last checkpoint first (not on delete)
}

// newSub loads the checkpoint, fixes the start position synchronously (so
// events appended right after Create are not missed) and starts the
// goroutine.
func newSub(store *Store, settings *psSettings) *psSub {
	s := newSubState(store, settings)
	go s.run()
	return s
}

// newSubState is newSub without the goroutine, for tests that drive the
// state machine step by step.
func newSubState(store *Store, settings *psSettings) *psSub {
	s := &psSub{
		settings:    settings,
		store:       store,
		reqs:        make(chan func(), 256),
		stop:        make(chan psStop),
		done:        make(chan struct{}),
		strategy:    newStrategy(settings.Strategy),
		lastReadSeq: -1,
		lastKnown:   -1,
		now:         time.Now(),
		tickEvery:   time.Second,
	}
	s.checkpointAt = s.now
	if cp, ok := s.loadCheckpoint(); ok {
		s.hasCheckpoint, s.lastCheckpoint = true, cp
		s.lastReadSeq = cp
		s.nextNumber = cp + 1
		s.nextPos = uint64(cp) + 1
	} else if settings.isAll() {
		if settings.StartCommit < 0 {
			s.nextPos = store.HeadPosition() + 1
		} else {
			s.nextPos = uint64(settings.StartCommit)
		}
	} else {
		if settings.StartRevision < 0 {
			s.nextNumber = store.LastEventNumber(settings.Stream) + 1
		} else {
			s.nextNumber = settings.StartRevision
		}
	}
	return s
}

// loadCheckpoint reads the last checkpoint event, if any.
func (s *psSub) loadCheckpoint() (int64, bool) {
	recs, err := s.store.ReadStream(s.settings.checkpointStream(), -1, false, 1, false)
	if err != nil || len(recs) == 0 || recs[0].Event == nil {
		return 0, false
	}
	var v string
	if err := json.Unmarshal(recs[0].Event.Data, &v); err != nil {
		return 0, false
	}
	return parseCheckpoint(v)
}

// parseCheckpoint decodes "5" (stream) or "C:123/P:123" ($all).
func parseCheckpoint(v string) (int64, bool) {
	if strings.HasPrefix(v, "C:") {
		i := strings.Index(v, "/P:")
		if i < 0 {
			return 0, false
		}
		v = v[2:i]
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}

// formatPosition renders a seq the way checkpoints and GetInfo do.
func (s *psSub) formatPosition(seq int64) string {
	if s.settings.isAll() {
		return fmt.Sprintf("C:%d/P:%d", seq, seq)
	}
	return strconv.FormatInt(seq, 10)
}

// call runs f on the subscription goroutine and waits for it.
func (s *psSub) call(f func()) error {
	finished := make(chan struct{})
	select {
	case s.reqs <- func() { f(); close(finished) }:
	case <-s.done:
		return errSubGone
	}
	select {
	case <-finished:
		return nil
	case <-s.done:
		return errSubGone
	}
}

// post queues f on the subscription goroutine without waiting for it.
func (s *psSub) post(f func()) {
	select {
	case s.reqs <- f:
	case <-s.done:
	}
}

// shutdown stops the goroutine and drops every consumer.
func (s *psSub) shutdown(flush bool) {
	select {
	case s.stop <- psStop{flush: flush}:
	case <-s.done:
	}
	<-s.done
}

// psReadOn is always ready: the subscription goroutine waits on it when it
// has more to read and a consumer has room for it.
var psReadOn = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

func (s *psSub) run() {
	defer close(s.done)
	ticker := time.NewTicker(s.tickEvery)
	defer ticker.Stop()
	for {
		// As the server does, read on while consumers have room, rather
		// than one buffer's worth per ack: the select below still takes
		// acks and stops between rounds.
		changed := s.fill()
		if s.push() && changed == nil && !s.ended {
			changed = psReadOn
		}
		select {
		case f := <-s.reqs:
			s.now = time.Now()
			f()
			// Drain what else is queued (acks come in bursts) before the
			// next push, so one push serves many acks.
		drain:
			for i := 0; i < 1024; i++ {
				select {
				case f = <-s.reqs:
					f()
				default:
					break drain
				}
			}
			s.maybeCheckpoint(false)
		case <-changed:
		case <-ticker.C:
			s.now = time.Now()
			s.tick()
		case st := <-s.stop:
			s.now = time.Now()
			if st.flush {
				s.writeCheckpoint()
			}
			for _, c := range s.consumers {
				close(c.dropped)
			}
			s.consumers = nil
			return
		}
	}
}

// backlog is the number of read messages not yet delivered.
func (s *psSub) backlog() int { return len(s.buffer) - s.head + len(s.retry) }

// fill reads from the store in read_batch_size batches while the buffer has
// room. It returns the channel to wait on when caught up, else nil.
func (s *psSub) fill() <-chan struct{} {
	capacity := s.settings.bufferCap()
	if s.replay != nil {
		s.fillReplay(capacity)
	}
	if s.caughtUp {
		select {
		case <-s.changed:
			s.caughtUp = false
		default:
			return s.changed
		}
	}
	if s.ended {
		return nil
	}
	batch := s.settings.batchSize()
	for s.backlog() < capacity {
		changed := s.store.Changed()
		n := min(batch, capacity-s.backlog())
		got := s.readBatch(n)
		if got < n || s.ended {
			s.caughtUp = true
			s.changed = changed
			if s.ended {
				return nil
			}
			return changed
		}
	}
	return nil
}

// readBatch reads up to n records at the read position into the buffer and
// returns how many records were read (including filtered-out ones).
func (s *psSub) readBatch(n int) int {
	if s.head > 0 && s.head == len(s.buffer) {
		s.buffer, s.head = s.buffer[:0], 0
	} else if s.head > len(s.buffer)/2 && s.head > 64 {
		s.buffer = append(s.buffer[:0], s.buffer[s.head:]...)
		s.head = 0
	}
	st := s.settings
	if st.isAll() {
		recs := s.store.ReadAll(s.nextPos, true, n, st.ResolveLinks)
		msgs := make([]psMessage, len(recs))
		for i, r := range recs {
			orig := r.Original()
			s.nextPos = orig.Position + 1
			s.lastReadSeq = int64(orig.Position)
			if excludedFromAll(st, orig) {
				continue
			}
			s.lastKnown = int64(orig.Position)
			m := &msgs[i]
			m.ev, m.id, m.seq = r, orig.ID, int64(orig.Position)
			s.buffer = append(s.buffer, m)
		}
		return len(recs)
	}
	recs, err := s.store.ReadStream(st.Stream, s.nextNumber, true, n, st.ResolveLinks)
	if err != nil {
		var deleted *StreamDeletedError
		if errors.As(err, &deleted) {
			s.ended = true
		}
		return 0
	}
	// One allocation for the batch's messages rather than one each.
	msgs := make([]psMessage, len(recs))
	for i, r := range recs {
		orig := r.Original()
		if orig.Number == Tombstone {
			s.ended = true
		} else {
			s.nextNumber = orig.Number + 1
			s.lastKnown = orig.Number
		}
		s.lastReadSeq = orig.Number
		m := &msgs[i]
		m.ev, m.id, m.seq = r, orig.ID, orig.Number
		s.buffer = append(s.buffer, m)
	}
	return len(recs)
}

// excludedFromAll applies the default $all exclusions (epoch records and
// $all subscriptions' own checkpoint/parked streams), then the filter.
func excludedFromAll(st *psSettings, rec *Record) bool {
	if rec.Stream == "$epoch-information" {
		return true
	}
	if strings.HasPrefix(rec.Stream, "$persistentsubscription-$all::") &&
		(strings.HasSuffix(rec.Stream, "-checkpoint") || strings.HasSuffix(rec.Stream, "-parked")) {
		return true
	}
	return st.Filter != nil && !st.Filter.match(rec.Stream, rec.Type)
}

// push hands out messages, the retry list first, then the buffer, until the
// strategy reports no capacity. Messages are queued per consumer and handed
// over in one burst at the end. more reports that it delivered the whole
// backlog with every consumer still taking: reading on may find more to send.
func (s *psSub) push() (more bool) {
	if len(s.consumers) == 0 || s.backlog() == 0 {
		return false
	}
	delivered, stopped := 0, false
	s.now = time.Now()
	deadline := s.now.Add(time.Duration(s.settings.MessageTimeoutMs) * time.Millisecond)
	if len(s.retry) > 0 {
		pending := s.retry
		s.retry = nil
		var moved []*psMessage
		for i, m := range pending {
			c, r := s.strategy.pick(m)
			if r == noCapacity {
				s.retry = append(append(s.retry, pending[i:]...), moved...)
				moved = nil
				stopped = true
				break
			}
			if r == skipped {
				moved = append(moved, m)
				stopped = true
				continue
			}
			s.deliver(c, m, deadline)
			delivered++
		}
		s.retry = append(s.retry, moved...)
	}
	for s.head < len(s.buffer) {
		m := s.buffer[s.head]
		c, r := s.strategy.pick(m)
		if r == noCapacity {
			stopped = true
			break
		}
		s.buffer[s.head] = nil
		s.head++
		s.handed = append(s.handed, m)
		s.handedLive++
		if r == skipped {
			s.retry = append(s.retry, m)
			stopped = true
			continue
		}
		s.deliver(c, m, deadline)
		delivered++
	}
	for _, c := range s.consumers {
		if len(c.pending) > 0 {
			c.enqueue(c.pending)
			c.pending = c.pending[:0]
		}
	}
	return delivered > 0 && !stopped
}

// deliver hands m to c, in flight until deadline.
func (s *psSub) deliver(c *psConsumer, m *psMessage, deadline time.Time) {
	c.inFlight++
	c.total++
	s.totalItems++
	m.c, m.deadline = c, deadline
	if prev := s.outstanding.put(m); prev != nil {
		// Ids are not unique across (or even within) streams: the earlier
		// message is no longer outstanding, nor anywhere else.
		s.settle(prev)
	}
	c.pending = append(c.pending, sendItem{ev: m.ev, retry: m.retryCount})
}

// insertRetry puts m back on the retry list in seq order, before any
// replayed parked messages (which stay at the end).
func (s *psSub) insertRetry(m *psMessage) {
	if m.replayed {
		s.retry = append(s.retry, m)
		return
	}
	i := len(s.retry)
	for i > 0 && (s.retry[i-1].replayed || s.retry[i-1].seq > m.seq) {
		i--
	}
	s.retry = append(s.retry, nil)
	copy(s.retry[i+1:], s.retry[i:])
	s.retry[i] = m
}

// connect adds a consumer, enforcing max_subscriber_count.
func (s *psSub) connect(user string, bufferSize int) (*psConsumer, error) {
	var c *psConsumer
	var err error
	if cerr := s.call(func() {
		if max := s.settings.MaxSubscriberCount; max > 0 && len(s.consumers) >= int(max) {
			err = errMaxSubscribers
			return
		}
		s.nextID++
		c = newConsumer(s.nextID, user, bufferSize)
		s.consumers = append(s.consumers, c)
		s.strategy.add(c)
	}); cerr != nil {
		return nil, cerr
	}
	return c, err
}

// disconnect removes c; its unacked messages go back on the retry list with
// retryCount+1 and no max-retry check, for the other consumers.
func (s *psSub) disconnect(c *psConsumer) {
	for i, x := range s.consumers {
		if x == c {
			s.consumers = append(s.consumers[:i], s.consumers[i+1:]...)
			s.strategy.remove(c)
			break
		}
	}
	c.pending = nil
	var back []*psMessage
	for m := range s.outstanding.all() {
		if m.c == c {
			back = append(back, m)
		}
	}
	for _, m := range back {
		s.outstanding.take(m.id)
		m.retryCount++
		s.insertRetry(m)
	}
	c.inFlight = 0
}

// ack completes messages; unknown ids are ignored.
func (s *psSub) ack(ids []uuid.UUID) {
	s.touched += s.outstanding.touch(ids)
	for _, id := range ids {
		if m := s.outstanding.take(id); m != nil {
			m.c.inFlight--
			s.processed(m)
		}
	}
}

// nackAction mirrors ReadReq_Nack_Action.
type nackAction int32

const (
	nackUnknown nackAction = iota
	nackPark
	nackRetry
	nackSkip
	nackStop
)

func (s *psSub) nack(ids []uuid.UUID, action nackAction, reason string) {
	for _, id := range ids {
		m := s.outstanding.take(id)
		if m == nil {
			continue
		}
		m.c.inFlight--
		switch action {
		case nackPark:
			s.park(m, "Client explicitly NAK'ed message.\n"+reason)
		case nackRetry, nackUnknown:
			s.retryOrPark(m)
		default: // Skip drops; Stop is a no-op that still frees the message.
			s.processed(m)
		}
	}
}

// retryOrPark requeues m with retryCount+1, or parks it once it has been
// retried max_retry_count times.
func (s *psSub) retryOrPark(m *psMessage) {
	if m.retryCount >= s.settings.MaxRetryCount {
		s.park(m, fmt.Sprintf("Reached retry count of %d", s.settings.MaxRetryCount))
		return
	}
	m.retryCount++
	s.insertRetry(m)
}

// processed counts a message as done for checkpointing.
func (s *psSub) processed(m *psMessage) {
	if !m.replayed {
		s.sinceCheckpoint++
	}
	s.settle(m)
}
