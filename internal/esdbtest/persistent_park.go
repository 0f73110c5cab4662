package esdbtest

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Parking and replaying: parked messages are $> links in
// $persistentsubscription-<key>-parked; all of this runs on the
// subscription goroutine (see persistent_sub.go).

// parkedACL is the metadata of parked streams: only admins may touch them.
const parkedACL = `{"$r":"$admins","$w":"$admins","$d":"$admins","$mr":"$admins","$mw":"$admins"}`

// park writes m to the parked stream as a $> link and counts it as done.
// Store errors are dropped: the server has no way to report them to the
// consumer, and an in-memory store only fails on deleted streams.
func (s *psSub) park(m *psMessage, reason string) {
	defer s.processed(m)
	var data []byte
	if m.ev.Event != nil {
		data = []byte(fmt.Sprintf("%d@%s", m.ev.Event.Number, m.ev.Event.Stream))
	} else if m.ev.Link != nil {
		data = m.ev.Link.Data
	}
	// The number in the subscribed stream; a replayed message's original is
	// the parked link, so it uses its event's number instead.
	number := m.ev.Original().Number
	if m.replayed && m.ev.Event != nil {
		number = m.ev.Event.Number
	}
	md, _ := json.Marshal(struct {
		Added                   string `json:"added"`
		Reason                  string `json:"reason"`
		SubscriptionEventNumber int64  `json:"subscriptionEventNumber"`
	}{time.Now().UTC().Format(time.RFC3339Nano), reason, number})
	parked := s.settings.parkedStream()
	if !s.parkedACL {
		if s.store.LastEventNumber("$$"+parked) < 0 {
			s.writeParkedMeta(-1)
		}
		s.parkedACL = true
	}
	_, _ = s.store.Append(parked, Expected{Kind: ExpectAny}, []ProposedEvent{{
		ID: uuid.New(), Type: "$>", Data: data, Metadata: md,
	}})
}

// writeParkedMeta writes the parked stream's ACL, with $tb when tb >= 0.
func (s *psSub) writeParkedMeta(tb int64) {
	md := `{"$acl":` + parkedACL + `}`
	if tb >= 0 {
		md = fmt.Sprintf(`{"$acl":%s,"$tb":%d}`, parkedACL, tb)
	}
	_, _ = s.store.Append("$$"+s.settings.parkedStream(), Expected{Kind: ExpectAny}, []ProposedEvent{{
		ID: uuid.New(), Type: "$metadata", IsJSON: true, Data: []byte(md),
	}})
}

// psReplay is a running replay of parked messages: a cursor over the parked
// stream, read in batches while the buffer has room (like the main source),
// so a large parked stream never sits in memory at once.
type psReplay struct {
	next int64 // next parked event number to read
	end  int64 // exclusive: min(stop_at, last parked number at start + 1)
	last int64 // last parked number queued; -1 if none
}

// startReplay begins replaying the parked messages numbered < stopAt (all
// when stopAt < 0). The end is fixed now, so messages parked again during
// the replay are not replayed twice. Runs on the subscription goroutine.
func (s *psSub) startReplay(stopAt int64) error {
	if s.replay != nil {
		return errReplayRunning
	}
	end := s.store.LastEventNumber(s.settings.parkedStream()) + 1
	if stopAt >= 0 && stopAt < end {
		end = stopAt
	}
	if end <= 0 {
		return nil
	}
	s.replay = &psReplay{end: end, last: -1}
	return nil
}

// fillReplay queues replayed messages at the end of the retry list with
// retry count 0, as resolved links (link = parked record; unresolvable ones
// are skipped). When done it hides the replayed range with $tb.
func (s *psSub) fillReplay(capacity int) {
	r := s.replay
	const batch = 100
	for s.replay != nil && s.backlog() < capacity {
		n := int(min(int64(min(batch, capacity-s.backlog())), r.end-r.next))
		var recs []ResolvedRecord
		var err error
		if n > 0 {
			recs, err = s.store.ReadStream(s.settings.parkedStream(), r.next, true, n, true)
		}
		for _, rec := range recs {
			link := rec.Original()
			if link.Number >= r.end {
				// Past the range: what was left of it is hidden by an
				// earlier replay's $tb. Without moving the cursor to the
				// end, this loop read the same records forever.
				r.next = r.end
				break
			}
			r.next, r.last = link.Number+1, link.Number
			if rec.Event == nil || rec.Link == nil {
				continue // unresolvable: skipped
			}
			s.retry = append(s.retry, &psMessage{ev: rec, id: link.ID, seq: -1, replayed: true})
		}
		if err != nil || len(recs) < n || n <= 0 || r.next >= r.end {
			if r.last >= 0 {
				s.writeParkedMeta(r.last + 1)
				s.parkedACL = true
			}
			s.replay = nil
		}
	}
}

// parkedCount is the number of visible parked messages.
func (s *psSub) parkedCount() int64 {
	parked := s.settings.parkedStream()
	last := s.store.LastEventNumber(parked)
	if last < 0 {
		return 0
	}
	tb := int64(0)
	if recs, err := s.store.ReadStream("$$"+parked, 0, true, 1, false); err == nil && len(recs) > 0 && recs[0].Event != nil {
		var md struct {
			TB *int64 `json:"$tb"`
		}
		if json.Unmarshal(recs[0].Event.Data, &md) == nil && md.TB != nil {
			tb = *md.TB
		}
	}
	if tb > last {
		return 0
	}
	return last + 1 - tb
}
