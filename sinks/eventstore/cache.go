package eventstore

import "sync"

// maxStreams bounds each streamCache; a full one is emptied (each stream
// then costs a read again).
const maxStreams = 10000

// streamCache is what the sink remembers of destination streams, one value
// per stream, safe for concurrent use: the positions of sequenced writes,
// the ends checked where guarded, the metadata copied.
type streamCache[V any] struct {
	mu sync.Mutex
	m  map[string]V
}

func (c *streamCache[V]) get(stream string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[stream]
	return v, ok
}

func (c *streamCache[V]) put(stream string, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxStreams {
		c.m = map[string]V{}
	}
	c.m[stream] = v
}

func (c *streamCache[V]) forget(stream string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, stream)
}
