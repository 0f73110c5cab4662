// Package esdbconn keeps a KurrentDB/EventStoreDB client usable across
// outages.
//
// The v4.2.0 client closes itself for good when a node discovery fails: at
// its first call, or after an Unavailable error, it tries MaxDiscoverAttempts
// times (10, 100 ms apart by default) and, if the server is still down, marks
// itself closed. Every later call then fails at once with
// ErrorCodeConnectionClosed, so a process that outlives a server outage of a
// second or two would never reach that server again. Client replaces such a
// closed client with a fresh one, built by the caller's dial function.
package esdbconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/config"
)

// Client hands out the current *esdb.Client and replaces it once it has
// closed itself. Concurrent calls that were queued behind the failing
// discovery are worse off: the client never answers them, whatever their
// context says (they wait on an internal channel nobody reads any more), so
// Call runs each call in a goroutine and stops waiting for it when its context
// ends or after MaxWait.
//
// A client that has closed itself is dropped, never Closed: Close would turn
// the calls blocked inside it into "send on closed channel" panics.
type Client struct {
	dial func() (*esdb.Client, error)

	mu     sync.Mutex
	cur    *esdb.Client
	dead   bool // cur has closed itself (and dial failed)
	closed bool
}

// New takes over first, which Close closes unless it has closed itself.
// dial makes a replacement; nil disables replacing.
func New(first *esdb.Client, dial func() (*esdb.Client, error)) *Client {
	return &Client{cur: first, dial: dial}
}

// Get returns the current client.
func (c *Client) Get() *esdb.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// Renew replaces used, the client a failed call ran on, if err says that it
// has closed itself and it is still the current client. It reports whether
// the next Get returns a different client (so that a retry can succeed).
func (c *Client) Renew(used *esdb.Client, err error) bool {
	if !IsClosed(err) {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	if c.cur != used {
		return true // someone else renewed it already
	}
	c.dead = true
	if c.dial == nil {
		return false
	}
	fresh, derr := c.dial()
	if derr != nil {
		return false
	}
	c.cur, c.dead = fresh, false // the closed one is dropped (see Client)
	return true
}

// Close closes the current client, unless it has closed itself; later
// Renews do nothing.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed && !c.dead {
		c.cur.Close()
	}
	c.closed = true
}

// MaxWait bounds how long Do waits for a call whose context has no earlier
// deadline. The client's own deadline for a non-streaming call is 10 s.
var MaxWait = 15 * time.Second

// ErrAbandoned is returned by Do for a call that did not return in time; the
// call may still be blocked inside the client.
var ErrAbandoned = errors.New("the client did not answer in time; call abandoned")

// Call runs fn on c's current client and returns its result, renewing a
// client that has closed itself. It returns ErrAbandoned if fn has not
// returned when ctx ends or MaxWait has passed. From then on abandoned
// reports true to fn, so that a late result that needs releasing (such as a
// subscription) can be released; fn must then return an error.
func Call[T any](ctx context.Context, c *Client, fn func(client *esdb.Client, abandoned func() bool) (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	client := c.Get()
	var mu sync.Mutex
	gaveUp := false
	abandoned := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return gaveUp
	}
	done := make(chan result, 1)
	go func() {
		v, err := fn(client, abandoned)
		done <- result{v, err}
	}()
	t := time.NewTimer(MaxWait)
	defer t.Stop()
	var r result
	got := false
	select {
	case r = <-done:
		got = true
	case <-ctx.Done():
	case <-t.C:
	}
	if !got {
		mu.Lock()
		gaveUp = true
		mu.Unlock()
		select {
		case r = <-done: // it returned just now
		default:
			var zero T
			cause := context.Cause(ctx)
			if cause == nil {
				cause = fmt.Errorf("no answer within %s", MaxWait)
			}
			return zero, fmt.Errorf("%w: %v", ErrAbandoned, cause)
		}
	}
	c.Renew(client, r.err)
	return r.v, r.err
}

// IsClosed reports whether err is the client's "connection is closed" error.
func IsClosed(err error) bool {
	var e *esdb.Error
	return errors.As(err, &e) && e.Code() == esdb.ErrorCodeConnectionClosed
}

// NewClient makes a client from a connection string that config has
// checked; the client's own log lines go to log at debug level. Errors
// never quote the password.
func NewClient(cs string, log zerolog.Logger) (*esdb.Client, error) {
	conf, err := esdb.ParseConnectionString(cs)
	if err != nil {
		return nil, fmt.Errorf("parsing connection string %s: %w", config.Redact(cs), err)
	}
	conf.Logger = func(level esdb.LogLevel, format string, args ...any) {
		log.Debug().Str("component", "esdb-client").Str("clientLevel", level).Msgf(format, args...)
	}
	return esdb.NewClient(conf)
}

// LastNumber is the number of the last event of stream, or -1 when the
// stream has none (or does not exist).
func LastNumber(ctx context.Context, c *esdb.Client, stream string) (int64, error) {
	ev, err := LastEvent(ctx, c, stream)
	if ev == nil || err != nil {
		return -1, err
	}
	return int64(ev.EventNumber), nil
}

// LastEvent is the last event of stream, or nil when the stream has none
// (or does not exist).
func LastEvent(ctx context.Context, c *esdb.Client, stream string) (*esdb.RecordedEvent, error) {
	rs, err := c.ReadStream(ctx, stream, esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.End{}}, 1)
	if err != nil {
		if notFound(err) {
			return nil, nil
		}
		return nil, err
	}
	defer rs.Close()
	ev, err := rs.Recv()
	switch {
	case errors.Is(err, io.EOF), notFound(err):
		return nil, nil
	case err != nil:
		return nil, err
	}
	return ev.OriginalEvent(), nil
}

func notFound(err error) bool {
	var e *esdb.Error
	return errors.As(err, &e) && e.Code() == esdb.ErrorCodeResourceNotFound
}

// ParseLink reads a link event's data, "n@stream": the stream and number of
// the event it points to.
func ParseLink(data []byte) (stream string, number uint64, ok bool) {
	num, stream, ok := strings.Cut(string(data), "@")
	if !ok || stream == "" {
		return "", 0, false
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return "", 0, false
	}
	return stream, n, true
}
