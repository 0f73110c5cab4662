package esdbtest

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/google/uuid"
)

// psOutstanding behaves as a map from id to message through a random mix of
// puts (new ids and ids already in), takes (present and absent ids), gets
// and touches, with ids random or differing in their last bytes only,
// while it grows through several sizes: every entry stays reachable after
// the backward shifts of removals.
func TestPSOutstandingMatchesMap(t *testing.T) {
	for _, pattern := range []string{"random", "sequential"} {
		t.Run(pattern, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			newID := func(i int) uuid.UUID {
				if pattern == "random" {
					return uuid.New()
				}
				var id uuid.UUID
				binary.BigEndian.PutUint64(id[8:], uint64(i))
				return id
			}
			var tab psOutstanding
			want := map[uuid.UUID]*psMessage{}
			var ids []uuid.UUID
			check := func(step int) {
				t.Helper()
				if tab.len() != len(want) {
					t.Fatalf("step %d: len %d, want %d", step, tab.len(), len(want))
				}
				for id, m := range want {
					if got := tab.get(id); got != m {
						t.Fatalf("step %d: get %v = %p, want %p", step, id, got, m)
					}
				}
				n := 0
				for m := range tab.all() {
					if want[m.id] != m {
						t.Fatalf("step %d: all yields %v, which the map does not hold", step, m.id)
					}
					n++
				}
				if n != len(want) {
					t.Fatalf("step %d: all yields %d, want %d", step, n, len(want))
				}
			}
			for step := 0; step < 20_000; step++ {
				switch r := rng.IntN(10); {
				case r < 5 || len(ids) == 0: // a new id, sometimes one already in
					id := newID(step)
					if r == 0 && len(ids) > 0 {
						id = ids[rng.IntN(len(ids))]
					} else {
						ids = append(ids, id)
					}
					m := &psMessage{id: id}
					if prev := tab.put(m); prev != want[id] {
						t.Fatalf("step %d: put replaced %p, want %p", step, prev, want[id])
					}
					want[id] = m
				case r < 9: // take one in, or one never put
					id := newID(-step)
					if r < 8 {
						i := rng.IntN(len(ids))
						id = ids[i]
						ids[i] = ids[len(ids)-1]
						ids = ids[:len(ids)-1]
					}
					if got := tab.take(id); got != want[id] {
						t.Fatalf("step %d: take %v = %p, want %p", step, id, got, want[id])
					}
					delete(want, id)
				default:
					tab.touch(append(ids[:len(ids):len(ids)], newID(-step))) // reads only
					check(step)
				}
			}
			check(-1)
			for _, id := range ids {
				tab.take(id)
			}
			if tab.len() != 0 || tab.touch(ids) != 0 {
				t.Fatalf("%d left after taking every id", tab.len())
			}
			if len(tab.slots) < 2*psOutstandingMin {
				t.Fatalf("the table never grew: %d slots", len(tab.slots))
			}
		})
	}
}

// Ids whose hashes are equal stay apart: a slot is matched by the id in its
// message, not by the hash alone.
func TestPSOutstandingHashCollision(t *testing.T) {
	var tab psOutstanding
	a, b := &psMessage{id: uuid.New()}, &psMessage{id: uuid.New()}
	tab.put(a)
	// Move a to b's home slot under b's hash, as if their hashes collided.
	hb := tab.hash(&b.id)
	for i := range tab.slots {
		if tab.slots[i].m == a {
			tab.slots[i] = psSlot{}
		}
	}
	tab.slots[hb>>tab.shift] = psSlot{h: hb, m: a}
	if got := tab.get(b.id); got != nil {
		t.Fatalf("get of an id not put found %p", got)
	}
	if prev := tab.put(b); prev != nil {
		t.Fatalf("put replaced %p, a message with another id", prev)
	}
	if got := tab.take(b.id); got != b {
		t.Fatalf("take = %p, want %p", got, b)
	}
	if tab.len() != 1 || tab.slots[hb>>tab.shift].m != a {
		t.Fatalf("%d left, want the first message in its slot", tab.len())
	}
}
