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
	for id, o := range s.outstanding {
		if !s.now.Before(o.deadline) {
			delete(s.outstanding, id)
			o.c.inFlight--
			s.retryOrPark(o.msg)
		}
	}
	s.maybeCheckpoint(true)
}

// checkpointCandidate is the seq of the last message such that every earlier
// one is acked, parked or skipped. O(outstanding + retry), but it only runs
// when a checkpoint is due, not per ack.
func (s *psSub) checkpointCandidate() (int64, bool) {
	low, found := int64(math.MaxInt64), false
	for _, o := range s.outstanding {
		if !o.msg.replayed && o.msg.seq < low {
			low, found = o.msg.seq, true
		}
	}
	for _, m := range s.retry {
		if !m.replayed && m.seq < low {
			low, found = m.seq, true
		}
	}
	if s.head < len(s.buffer) && s.buffer[s.head].seq < low {
		low, found = s.buffer[s.head].seq, true
	}
	if found {
		return low - 1, low > 0
	}
	return s.lastReadSeq, s.lastReadSeq >= 0
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
