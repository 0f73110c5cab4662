package sinks

import (
	"context"
	"errors"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Sink is a destination: Write durably writes consecutive events of one
// destination stream (stream, after the policy's mapping), in order, or returns a *WriteError saying how many were
// written and what kind of failure stopped the rest. The replicator owns
// batching, concurrency and acks; a sink only writes.
type Sink interface {
	Write(ctx context.Context, stream string, events []Event) error
	Close() error
}

// Readier is a sink that can tell whether its destination answers. ditto
// asks every few seconds; /health/ready reports the error, and a
// *FatalError stops ditto (exit code 1), for failures no retry can fix.
type Readier interface {
	Ready(ctx context.Context) error
}

// Holder is a sink that can tell how far its destination holds streams, so
// that ditto can say what a failover to it would lose now (the recovery
// point). Held returns, for each stream asked about, the last event number
// the destination holds (-1: none); a sink that cannot know returns an
// error, and the recovery point then counts every event after the source
// checkpoint.
type Holder interface {
	Held(ctx context.Context, streams []string) (map[string]int64, error)
}

// Settings are one sink's settings: a pointer to a struct whose fields carry
// the same tags as config.Config (envconfig, default, desc, ditto:"required",
// secret), read from DITTO_* variables. Validate returns every problem, each
// naming its variable; it runs after the values parsed and the required ones
// were found.
type Settings interface {
	Validate() []string
}

// Env is what ditto hands every sink it opens.
type Env struct {
	Log    zerolog.Logger
	Stdout io.Writer
	// Metrics registers the sink's own metrics on ditto's registry.
	Metrics prometheus.Registerer
	// Observe records one call to the destination in
	// ditto_io_duration_seconds, labelled with the sink's name as system.
	Observe func(operation string, d time.Duration)
	// Source answers what the policy stage leaves to a sink: ordering
	// where destination numbers are not source numbers, and source stream
	// metadata. Nil where the policy needs neither.
	Source Source
}

// Plugin describes a sink: the name DITTO_SINK selects it by, its settings
// and how to open it. Each sink package registers its plugin in an init
// function; nothing else in ditto knows the sink.
type Plugin struct {
	Name    string
	Summary string // one sentence for DITTO_SINK and `ditto config`
	// Settings returns the sink's settings with zero values, to be loaded.
	// Nil for a sink without settings.
	Settings func() Settings
	// Writers, if positive, is DITTO_WRITERS' default for this sink: how
	// many streams it needs written at once to be fast.
	Writers int
	// StreamMetadata says the sink sets stream metadata on its
	// destination, so DITTO_COPY_STREAM_METADATA applies to it.
	StreamMetadata bool
	// Open connects the sink. An error stops ditto at start (exit code 1)
	// with the message, which must name what to fix.
	Open func(ctx context.Context, s Settings, env Env) (Sink, error)
}

var (
	registryMu sync.RWMutex
	registry   = map[string]Plugin{}
)

// Register adds a sink; registering a name twice is a programming error.
func Register(p Plugin) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if p.Name == "" || p.Open == nil {
		panic("sinks: a plugin needs a name and an Open function")
	}
	if _, dup := registry[p.Name]; dup {
		panic("sinks: " + p.Name + " registered twice")
	}
	registry[p.Name] = p
}

// Lookup returns the sink registered as name.
func Lookup(name string) (Plugin, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	p, ok := registry[name]
	return p, ok
}

// Plugins returns every registered sink, sorted by name.
func Plugins() []Plugin {
	registryMu.RLock()
	defer registryMu.RUnlock()
	out := make([]Plugin, 0, len(registry))
	for _, p := range registry {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// FatalError is a destination failure that retrying cannot fix, such as
// rejected credentials: ditto stops with exit code 1 rather than retry every
// event until the source parks it.
type FatalError struct{ Err error }

func (e *FatalError) Error() string { return e.Err.Error() }
func (e *FatalError) Unwrap() error { return e.Err }

// Fatal marks err as fatal.
func Fatal(err error) error { return &FatalError{Err: err} }

// IsFatal reports whether err is, or wraps, a *FatalError.
func IsFatal(err error) bool {
	var f *FatalError
	return errors.As(err, &f)
}
