package esdbtest

import (
	"encoding/binary"
	"iter"
	"math/bits"
	"math/rand/v2"

	"github.com/google/uuid"
)

// psOutstanding indexes the messages in flight by ack id. It is an
// open-addressing table (linear probing, at most half full, deletion by
// backward shift) rather than a map so that an ack removes what it finds,
// and a delivery replaces what it finds, in one probe: with a consumer
// buffer of 10,000 and random ids, a map's lookup and its delete (or
// insert) each missed the cache, and they were about a third of the
// subscription goroutine's time in profiles of a replication read.
//
// Owned by the subscription goroutine, like the messages it holds.
type psOutstanding struct {
	slots  []psSlot // a power of two long, or empty
	shift  uint     // 64 - log2(len(slots)): the hash's top bits pick a slot
	n      int
	k0, k1 uint64 // hash seed, so that chosen ids cannot pile up in one run
}

// psSlot is a slot of psOutstanding: m, nil when the slot is free, and the
// hash of its id. The id itself is compared in the message, which the
// caller of get and take reads anyway: two thirds of the size of a slot
// holding the id keep more of the table in cache.
type psSlot struct {
	h uint64
	m *psMessage
}

// psOutstandingMin is the table's first size.
const psOutstandingMin = 64

// len is the number of messages in flight.
func (t *psOutstanding) len() int { return t.n }

// hash is the folded 128-bit product of the id's seeded halves, which
// mixes every bit of the id into its top bits, the ones that pick the id's
// home slot.
func (t *psOutstanding) hash(id *uuid.UUID) uint64 {
	hi, lo := bits.Mul64(binary.LittleEndian.Uint64(id[:8])^t.k0, binary.LittleEndian.Uint64(id[8:])^t.k1)
	return hi ^ lo
}

// get returns the message in flight with id, or nil.
func (t *psOutstanding) get(id uuid.UUID) *psMessage {
	if i, ok := t.find(&id); ok {
		return t.slots[i].m
	}
	return nil
}

// find returns the slot of the message in flight with id.
func (t *psOutstanding) find(id *uuid.UUID) (uint64, bool) {
	if t.n == 0 {
		return 0, false
	}
	h := t.hash(id)
	mask := uint64(len(t.slots) - 1)
	for i := h >> t.shift; ; i = (i + 1) & mask {
		sl := &t.slots[i]
		if sl.m == nil {
			return 0, false
		}
		if sl.h == h && sl.m.id == *id {
			return i, true
		}
	}
}

// put adds m under m.id and returns the message it replaces, if any: ids
// are not unique, so a later message can take an earlier one's place.
func (t *psOutstanding) put(m *psMessage) (prev *psMessage) {
	if 2*(t.n+1) > len(t.slots) {
		t.grow()
	}
	h := t.hash(&m.id)
	mask := uint64(len(t.slots) - 1)
	for i := h >> t.shift; ; i = (i + 1) & mask {
		sl := &t.slots[i]
		if sl.m == nil {
			sl.h, sl.m = h, m
			t.n++
			return nil
		}
		if sl.h == h && sl.m.id == m.id {
			prev, sl.m = sl.m, m
			return prev
		}
	}
}

// touch reads the home slots of ids and the messages in them before a
// batch of takes: these loads do not depend on each other, so their cache
// misses overlap, where take's come one after another (a fifth less time
// in acks of ten ids in profiles of a replication read). It returns a sum
// of what it read only so that the compiler keeps the loads.
func (t *psOutstanding) touch(ids []uuid.UUID) uintptr {
	if t.n == 0 {
		return 0
	}
	var sum uintptr
	for i := range ids {
		sl := &t.slots[t.hash(&ids[i])>>t.shift]
		if m := sl.m; m != nil {
			sum += uintptr(sl.h) + uintptr(m.seq)
		}
	}
	return sum
}

// take removes the message in flight with id and returns it, or nil.
func (t *psOutstanding) take(id uuid.UUID) *psMessage {
	i, ok := t.find(&id)
	if !ok {
		return nil
	}
	m := t.slots[i].m
	t.removeAt(i)
	return m
}

// removeAt empties slot i, moving later entries of its run back so that
// every entry stays reachable from its home slot without tombstones.
func (t *psOutstanding) removeAt(i uint64) {
	mask := uint64(len(t.slots) - 1)
	for j := (i + 1) & mask; t.slots[j].m != nil; j = (j + 1) & mask {
		// The entry at j may fill the gap at i unless its home lies
		// cyclically in (i, j].
		if home := t.slots[j].h >> t.shift; (j-home)&mask >= (j-i)&mask {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = psSlot{}
	t.n--
}

// grow doubles the table (and seeds it on first use).
func (t *psOutstanding) grow() {
	old := t.slots
	size := max(2*len(old), psOutstandingMin)
	if old == nil {
		t.k0, t.k1 = rand.Uint64(), rand.Uint64()
	}
	t.slots = make([]psSlot, size)
	t.shift = uint(64 - bits.TrailingZeros(uint(size)))
	t.n = 0
	mask := uint64(size - 1)
	for _, sl := range old {
		if sl.m == nil {
			continue
		}
		i := sl.h >> t.shift
		for t.slots[i].m != nil {
			i = (i + 1) & mask
		}
		t.slots[i] = sl
		t.n++
	}
}

// all yields every message in flight, in no particular order. The table
// must not change during the iteration.
func (t *psOutstanding) all() iter.Seq[*psMessage] {
	return func(yield func(*psMessage) bool) {
		for i := range t.slots {
			if m := t.slots[i].m; m != nil && !yield(m) {
				return
			}
		}
	}
}
