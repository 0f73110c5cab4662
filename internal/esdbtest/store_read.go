package esdbtest

import (
	"bytes"
	"math"
	"sort"
	"time"
)

// linkType is the event type of a link ("<n>@<stream>" data).
const linkType = "$>"

// window is the range of event numbers of st that metadata leaves visible:
// min = max(0, last-$maxCount+1, $tb). Metastreams have an implicit
// $maxCount of 1, so their latest event is the current metadata.
//
// Lock must be held.
func window(st *streamState) (lo, last int64) {
	last = st.last()
	maxCount := st.meta.maxCount
	if isMetastream(st.name) {
		maxCount = 1
	}
	if maxCount > 0 && last-maxCount+1 > lo {
		lo = last - maxCount + 1
	}
	if st.meta.tb > lo {
		lo = st.meta.tb
	}
	return lo, last
}

// expired reports whether $maxAge hides rec, checked at read time.
func expired(st *streamState, rec *Record, now time.Time) bool {
	return st.meta.maxAge > 0 && now.Sub(rec.Created) > st.meta.maxAge
}

// ReadStream reads up to max events of stream starting at event number from
// (inclusive; from < 0 means the last event when backwards), forwards or
// backwards, applying $tb, $maxCount and $maxAge ($$S streams have an implicit
// $maxCount of 1). Errors: ErrStreamNotFound, *StreamDeletedError.
// An existing stream with nothing visible returns an empty slice, nil.
func (s *Store) ReadStream(stream string, from int64, forward bool, max int, resolveLinks bool) ([]ResolvedRecord, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := s.streams[stream]
	if st.tombstoned() || (isMetastream(stream) && s.streams[stream[2:]].tombstoned()) {
		return nil, &StreamDeletedError{Stream: stream}
	}
	if st == nil || len(st.events) == 0 || st.softDeleted() {
		return nil, ErrStreamNotFound
	}
	now := time.Now()
	lo, last := window(st)
	out := make([]ResolvedRecord, 0, min(max, 64))
	add := func(rec *Record) {
		if expired(st, rec, now) {
			return
		}
		if resolveLinks {
			out = append(out, s.resolve(rec, now))
		} else {
			out = append(out, ResolvedRecord{Event: rec})
		}
	}
	if forward {
		for n := max64(from, lo); n <= last && len(out) < max; n++ {
			add(st.events[n])
		}
		return out, nil
	}
	start := from
	if start < 0 || start > last {
		start = last
	}
	for n := start; n >= lo && len(out) < max; n-- {
		add(st.events[n])
	}
	return out, nil
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// ReadAll reads up to max records of the whole log. Forwards returns records
// with Position >= from; backwards returns records with Position < from
// (from == math.MaxUint64 means from the end). Stream metadata is not applied.
func (s *Store) ReadAll(from uint64, forward bool, max int, resolveLinks bool) []ResolvedRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	now := time.Now()
	i := sort.Search(len(s.log), func(i int) bool { return s.log[i].Position >= from })
	out := make([]ResolvedRecord, 0, min(max, 64))
	add := func(rec *Record) {
		if resolveLinks {
			out = append(out, s.resolve(rec, now))
		} else {
			out = append(out, ResolvedRecord{Event: rec})
		}
	}
	if forward {
		for ; i < len(s.log) && len(out) < max; i++ {
			add(s.log[i])
		}
		return out
	}
	if from == math.MaxUint64 {
		i = len(s.log)
	}
	for i--; i >= 0 && len(out) < max; i-- {
		add(s.log[i])
	}
	return out
}

// Resolve resolves rec if it is a $> link ("<n>@<stream>" data), applying the
// target stream's deletion, $tb, $maxCount and $maxAge; otherwise it returns
// ResolvedRecord{Event: rec}.
func (s *Store) Resolve(rec *Record) ResolvedRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.resolve(rec, time.Now())
}

// resolve is Resolve with the lock held.
//
// The links the store writes, and those it reloads, carry the ref of the
// stream their data names (Record.target), so that resolving them, once
// per read of $ce-, $et- or $streams, needs neither the name's parse nor a
// lookup of it. Streams stay in the index for good, so refs stay valid;
// everything else is checked on the stream each time. A ref rather than a
// pointer fits in the padding after Record.IsJSON: records are no larger,
// which appends would pay for.
func (s *Store) resolve(rec *Record, now time.Time) ResolvedRecord {
	if rec.Type != linkType {
		return ResolvedRecord{Event: rec}
	}
	var n int64
	var st *streamState
	if rec.target != 0 {
		st, n = s.refs[rec.target], linkNumber(rec.Data)
	} else {
		var target []byte
		var ok bool
		if n, target, ok = parseLink(rec.Data); !ok {
			return ResolvedRecord{Event: rec} // not a link after all
		}
		st = s.streams[string(target)]
	}
	unresolved := ResolvedRecord{Link: rec}
	if st == nil || st.tombstoned() || st.softDeleted() {
		return unresolved
	}
	if isMetastream(st.name) && s.streams[st.name[2:]].tombstoned() {
		return unresolved
	}
	lo, last := window(st)
	if n < lo || n > last || expired(st, st.events[n], now) {
		return unresolved
	}
	return ResolvedRecord{Event: st.events[n], Link: rec}
}

// parseLink splits link data "<long>@<stream>" without allocating.
func parseLink(data []byte) (n int64, stream []byte, ok bool) {
	at := bytes.IndexByte(data, '@')
	if at <= 0 {
		return 0, nil, false
	}
	neg := false
	digits := data[:at]
	if digits[0] == '-' {
		neg, digits = true, digits[1:]
		if len(digits) == 0 {
			return 0, nil, false
		}
	}
	for _, c := range digits {
		if c < '0' || c > '9' || n > (math.MaxInt64-int64(c-'0'))/10 {
			return 0, nil, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, data[at+1:], true
}

// linkNumber is the event number of link data that parseLink accepts and
// that names a non-negative number, as the links the store writes do.
func linkNumber(data []byte) int64 {
	var n int64
	for _, c := range data {
		if c == '@' {
			break
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// streamSince serves catch-up stream subscriptions: up to max visible events
// of stream numbered >= next, with metadata applied. When nothing is left
// and the stream is tombstoned, tomb is the $streamDeleted record, which a
// subscription delivers before it ends.
func (s *Store) streamSince(stream string, next int64, max int, resolveLinks bool) (out []ResolvedRecord, tomb *Record) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := s.streams[stream]
	if st == nil {
		return nil, nil
	}
	now := time.Now()
	lo, last := window(st)
	if st.softDeleted() {
		lo = last + 1
	}
	for n := max64(next, lo); n <= last && len(out) < max; n++ {
		rec := st.events[n]
		if expired(st, rec, now) {
			continue
		}
		if resolveLinks {
			out = append(out, s.resolve(rec, now))
		} else {
			out = append(out, ResolvedRecord{Event: rec})
		}
	}
	if len(out) == 0 && st.tombstone != nil {
		return nil, st.tombstone
	}
	return out, nil
}

// isTombstoned reports whether stream is hard-deleted.
func (s *Store) isTombstoned(stream string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.streams[stream].tombstoned()
}
