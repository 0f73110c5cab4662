package esdbtest

import (
	"encoding/json"
	"math"
	"time"

	"github.com/google/uuid"
)

// Timeouts and checkpoints; all of this runs on the subscription goroutine
// (see persistent_sub.go).

// tick expires in-flight messages past their timeout and checkpoints on time.
func (s *psSub) tick() {
	var expired []*psMessage
	for m := range s.outstanding.all() {
		if !s.now.Before(m.deadline) {
			expired = append(expired, m)
		}
	}
	for _, m := range expired {
		s.outstanding.take(m.id)
		m.c.inFlight--
		s.retryOrPark(m)
	}
	s.maybeCheckpoint(true)
}

// checkpointCandidate is the seq of the last message such that every earlier
// one is acked, parked or skipped: just below the lowest non-replayed
// message still outstanding or on the retry list (the first unsettled one
// of handed), or the buffer's head. Amortized O(1): it runs whenever
// max_checkpoint_count acks have come in, and a scan of the outstanding
// messages there took about a tenth of the server's CPU in replication
// profiles.
func (s *psSub) checkpointCandidate() (int64, bool) {
	low, found := int64(math.MaxInt64), false
	if m := s.lowestUnsettled(); m != nil && m.seq < low {
		low, found = m.seq, true
	}
	if s.head < len(s.buffer) && s.buffer[s.head].seq < low {
		low, found = s.buffer[s.head].seq, true
	}
	if found {
		return low - 1, low > 0
	}
	return s.lastReadSeq, s.lastReadSeq >= 0
}

// lowestUnsettled drops the settled messages at the front of handed and
// returns the first unsettled one, or nil.
func (s *psSub) lowestUnsettled() *psMessage {
	for s.handedHead < len(s.handed) && s.handed[s.handedHead].settled {
		s.handed[s.handedHead] = nil
		s.handedHead++
	}
	if s.handedHead == len(s.handed) {
		s.handed, s.handedHead = s.handed[:0], 0
		return nil
	}
	return s.handed[s.handedHead]
}

// settle marks a non-replayed message as gone from outstanding and retry.
// When settled messages are most of handed, it is compacted, so it stays
// within twice the messages in flight or waiting for a retry (amortized
// O(1) per message).
func (s *psSub) settle(m *psMessage) {
	if m.replayed || m.settled {
		return
	}
	m.settled = true
	s.handedLive--
	if n := len(s.handed); n > 64 && n > 2*s.handedLive {
		live := s.handed[:0]
		for _, x := range s.handed[s.handedHead:] {
			if !x.settled {
				live = append(live, x)
			}
		}
		clear(s.handed[len(live):n])
		s.handed, s.handedHead = live, 0
	}
}

// maybeCheckpoint writes a checkpoint when max_checkpoint_count messages
// were processed, or on the tick when checkpoint_after has passed and at
// least min_checkpoint_count were (checkpoint_after 0: never on time).
func (s *psSub) maybeCheckpoint(onTick bool) {
	if s.sinceCheckpoint == 0 {
		return
	}
	st := s.settings
	due := s.sinceCheckpoint >= int(st.MaxCheckpointCount)
	if !due && onTick && st.CheckpointAfterMs > 0 &&
		s.now.Sub(s.checkpointAt) >= time.Duration(st.CheckpointAfterMs)*time.Millisecond &&
		s.sinceCheckpoint >= int(st.MinCheckpointCount) {
		due = true
	}
	if due {
		s.writeCheckpoint()
	}
}

func (s *psSub) writeCheckpoint() {
	if s.sinceCheckpoint == 0 {
		return
	}
	pos, ok := s.checkpointCandidate()
	if !ok || (s.hasCheckpoint && pos <= s.lastCheckpoint) {
		return
	}
	data, _ := json.Marshal(s.formatPosition(pos))
	if _, err := s.store.Append(s.settings.checkpointStream(), Expected{Kind: ExpectAny}, []ProposedEvent{{
		ID: uuid.New(), Type: "$SubscriptionCheckpoint", IsJSON: true, Data: data,
	}}); err != nil {
		return
	}
	s.hasCheckpoint, s.lastCheckpoint = true, pos
	s.sinceCheckpoint = 0
	s.checkpointAt = s.now
}
