// Package consumer reads persistent subscription groups on the source and
// hands every event to the replicator as a Delivery that is later acked or
// nacked. It owns connecting, reconnecting with backoff (the v4 client never
// reconnects by itself) and closing.
package consumer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/cenkalti/backoff/v4"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/internal/metrics"
)

// Delivery is one event received from a subscription.
type Delivery struct {
	Event      *esdb.ResolvedEvent
	RetryCount int
	Sub        *Subscription
	conn       *conn
}

// Slim drops what the replicator has copied out of the event once it holds
// it: the resolved record behind a link and the metadata maps and payloads
// of the original record. Acks, nacks and logs use only the original
// record's id, number and stream. This keeps the memory of a full buffer of
// in-flight events down by about a quarter.
func (d *Delivery) Slim() {
	if d.Event.Link != nil {
		d.Event.Event = nil
	}
	o := d.Event.OriginalEvent()
	o.Data, o.UserMetadata, o.SystemMetadata = nil, nil, nil
}

// Subscription is one subscription group and its bound metrics.
type Subscription struct {
	config.Subscription
	Metrics *metrics.Sub
}

// conn is one consumer connection. The client's Ack and Nack send on the
// gRPC stream, which allows one sender at a time, so they go through mu.
type conn struct {
	mu     sync.Mutex
	ps     *esdb.PersistentSubscription
	closed chan struct{} // closed by close
	once   sync.Once
}

// close ends the connection; the source requeues its unacked events.
func (cn *conn) close() {
	cn.once.Do(func() {
		close(cn.closed)
		cn.mu.Lock()
		defer cn.mu.Unlock()
		cn.ps.Close()
	})
}

// Options tune the consumer.
type Options struct {
	BufferSize               int  // in-flight events per connection
	ConsumersPerSubscription int  // connections per group
	Create                   bool // create a missing group instead of failing
	// BackoffInitial and BackoffMax bound the pause between reconnects
	// (exponential with jitter). Defaults: 100ms and 10s.
	BackoffInitial, BackoffMax time.Duration
	// Dial, if set, makes a new source client when the current one has
	// closed itself (the v4 client does so for good when the source is
	// unreachable during a discovery; see esdbconn). Without it, a source
	// outage at start or of more than a second or two is never recovered.
	Dial func() (*esdb.Client, error)
}

// Consumer reads every configured subscription group.
type Consumer struct {
	client    *esdbconn.Client
	subs      []*Subscription
	opts      Options
	log       zerolog.Logger
	connected atomic.Int64
	total     int

	connCtx     context.Context // parent of every connection; ended by Close
	cancelConns context.CancelFunc

	mu    sync.Mutex
	conns map[*conn]struct{}
}

// New returns a consumer of subs on client, which it owns from now on (Close
// closes it); m provides the per-group metrics.
func New(client *esdb.Client, subs []config.Subscription, m *metrics.Metrics, opts Options, log zerolog.Logger) *Consumer {
	if opts.BackoffInitial <= 0 {
		opts.BackoffInitial = 100 * time.Millisecond
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 10 * time.Second
	}
	if opts.ConsumersPerSubscription <= 0 {
		opts.ConsumersPerSubscription = 1
	}
	c := &Consumer{client: esdbconn.New(client, opts.Dial), opts: opts, log: log, conns: map[*conn]struct{}{}}
	c.connCtx, c.cancelConns = context.WithCancel(context.Background())
	for _, s := range subs {
		c.subs = append(c.subs, &Subscription{Subscription: s, Metrics: m.ForSubscription(s.Stream, s.Group)})
	}
	c.total = len(c.subs) * opts.ConsumersPerSubscription
	return c
}

// Ready reports whether every consumer connection is connected.
func (c *Consumer) Ready() bool { return int(c.connected.Load()) == c.total }

// ErrFatal marks errors that retrying cannot fix (wrong credentials, access
// denied, a missing group without DITTO_CREATE_SUBSCRIPTIONS).
var ErrFatal = errors.New("fatal subscription error")

// Run connects every consumer and sends each received event to out until
// stop is cancelled. It blocks while out is full: that is the back-pressure
// on the source. It returns when every reader has stopped; connections stay
// open so that in-flight events can still be acked, until Close.
// A fatal error on a first connection attempt stops Run with that error.
func (c *Consumer) Run(stop context.Context, out chan<- *Delivery) error {
	ctx, cancel := context.WithCancelCause(stop)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, s := range c.subs {
		for i := 0; i < c.opts.ConsumersPerSubscription; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := c.runOne(ctx, s, out); err != nil {
					cancel(err)
				}
			}()
		}
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// runOne keeps one consumer connection of s alive until ctx ends.
func (c *Consumer) runOne(ctx context.Context, s *Subscription, out chan<- *Delivery) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = c.opts.BackoffInitial
	b.MaxInterval = c.opts.BackoffMax
	b.MaxElapsedTime = 0 // retry for as long as the process runs
	b.RandomizationFactor = 0.5
	b.Reset()
	everConnected := false
	log := c.log.With().Str("stream", s.Stream).Str("group", s.Group).Logger()
	for ctx.Err() == nil {
		cn, err := c.subscribe(ctx, s)
		if err == nil {
			everConnected = true
			s.Metrics.Connected.Inc()
			c.connected.Add(1)
			log.Info().Msg("subscription connected")
			received := c.receive(ctx, s, cn, out)
			c.connected.Add(-1)
			s.Metrics.Connected.Dec()
			if ctx.Err() != nil {
				return nil
			}
			if received {
				b.Reset()
			}
			s.Metrics.Reconnects.Inc()
		} else {
			if errors.Is(err, ErrFatal) && !everConnected {
				return err
			}
			if ctx.Err() != nil {
				return nil
			}
			log.Warn().Err(err).Msg("cannot connect to subscription; retrying")
		}
		wait := b.NextBackOff()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	return nil
}

// subscribe opens one connection, creating the group first if allowed.
func (c *Consumer) subscribe(ctx context.Context, s *Subscription) (*conn, error) {
	opts := esdb.SubscribeToPersistentSubscriptionOptions{BufferSize: uint32(c.opts.BufferSize)}
	// Call gives up on a call the v4 client never answers (see esdbconn)
	// and replaces a client that has closed itself.
	ps, err := esdbconn.Call(ctx, c.client, func(client *esdb.Client, abandoned func() bool) (*esdb.PersistentSubscription, error) {
		// The connection lives on connCtx, not ctx: after a stop it must
		// stay open until in-flight events are acked.
		ps, err := client.SubscribeToPersistentSubscription(c.connCtx, s.Stream, s.Group, opts)
		if code(err) == esdb.ErrorCodeResourceNotFound && c.opts.Create {
			if cerr := c.create(ctx, client, s); cerr != nil {
				return nil, cerr
			}
			ps, err = client.SubscribeToPersistentSubscription(c.connCtx, s.Stream, s.Group, opts)
		}
		if err == nil && abandoned() {
			ps.Close()
			return nil, esdbconn.ErrAbandoned
		}
		return ps, err
	})
	if esdbconn.IsClosed(err) {
		c.log.Info().Str("stream", s.Stream).Str("group", s.Group).
			Msg("the source client closed itself after a failed discovery; retrying with a new one")
	}
	if err != nil {
		switch code(err) {
		case esdb.ErrorCodeResourceNotFound:
			return nil, fmt.Errorf("%w: subscription group %q on stream %q does not exist on the source; create it, or set DITTO_CREATE_SUBSCRIPTIONS=true: %v", ErrFatal, s.Group, s.Stream, err)
		case esdb.ErrorCodeUnauthenticated:
			return nil, fmt.Errorf("%w: the source rejected the credentials of DITTO_SOURCE_CONNECTION_STRING: %v", ErrFatal, err)
		case esdb.ErrorCodeAccessDenied:
			return nil, fmt.Errorf("%w: access to subscription %s:%s denied by the source: %v", ErrFatal, s.Stream, s.Group, err)
		}
		return nil, fmt.Errorf("subscribing to %s:%s: %w", s.Stream, s.Group, err)
	}
	cn := &conn{ps: ps, closed: make(chan struct{})}
	c.mu.Lock()
	c.conns[cn] = struct{}{}
	c.mu.Unlock()
	return cn, nil
}

// create creates the group with the settings ditto needs: links resolved,
// Pinned (a stream's events stay on one consumer), from the start.
func (c *Consumer) create(ctx context.Context, client *esdb.Client, s *Subscription) error {
	settings := esdb.SubscriptionSettingsDefault()
	settings.ResolveLinkTos = true
	settings.ConsumerStrategyName = esdb.ConsumerStrategyPinned
	err := client.CreatePersistentSubscription(ctx, s.Stream, s.Group, esdb.PersistentStreamSubscriptionOptions{
		Settings: &settings, StartFrom: esdb.Start{},
	})
	if err != nil && code(err) != esdb.ErrorCodeResourceAlreadyExists {
		return fmt.Errorf("creating subscription group %s:%s: %w", s.Stream, s.Group, err)
	}
	c.log.Info().Str("stream", s.Stream).Str("group", s.Group).Msg("created subscription group (resolve links, Pinned, from start)")
	return nil
}

// receive forwards events until the connection drops or ctx ends. It reports
// whether any event arrived (a healthy connection resets the backoff).
//
// Recv takes no context, so a reader goroutine feeds a channel that this
// loop selects on together with ctx. When ctx ends the connection stays open,
// so that in-flight events can still be acked, until Close.
func (c *Consumer) receive(ctx context.Context, s *Subscription, cn *conn, out chan<- *Delivery) bool {
	events := make(chan *esdb.PersistentSubscriptionEvent)
	go func() {
		for {
			ev := cn.ps.Recv()
			select {
			case events <- ev:
			case <-cn.closed:
				return
			}
			if ev.SubscriptionDropped != nil {
				return
			}
		}
	}()
	received := false
	for {
		var ev *esdb.PersistentSubscriptionEvent
		select {
		case ev = <-events:
		case <-ctx.Done():
			return received
		}
		if ev.SubscriptionDropped != nil {
			c.forget(cn)
			c.log.Warn().Err(ev.SubscriptionDropped.Error).Str("stream", s.Stream).Str("group", s.Group).Msg("subscription dropped; reconnecting")
			return received
		}
		if ev.EventAppeared == nil {
			continue
		}
		received = true
		s.Metrics.Received.Inc()
		d := &Delivery{Event: ev.EventAppeared.Event, RetryCount: ev.EventAppeared.RetryCount, Sub: s, conn: cn}
		select {
		case out <- d:
		case <-ctx.Done():
			// Not acked: the source redelivers it once this connection closes.
			return received
		}
	}
}

func (c *Consumer) forget(cn *conn) {
	c.mu.Lock()
	delete(c.conns, cn)
	c.mu.Unlock()
	cn.close()
}

// Close closes every connection. Events not acked by then are redelivered by
// the source to other consumers or on the next start.
func (c *Consumer) Close() {
	c.mu.Lock()
	conns := c.conns
	c.conns = map[*conn]struct{}{}
	c.mu.Unlock()
	for cn := range conns {
		cn.close()
	}
	c.cancelConns()
	c.client.Close()
}

// Ack acknowledges deliveries, grouped into one message per connection. A
// connection that has dropped cannot ack; its events are redelivered and the
// replicator writes them again idempotently.
func Ack(ds []*Delivery) error {
	return each(ds, func(ps *esdb.PersistentSubscription, evs []*esdb.ResolvedEvent) error {
		return ps.Ack(evs...)
	})
}

// Nack hands deliveries back to the source with action and reason.
func Nack(ds []*Delivery, action esdb.NackAction, reason string) error {
	return each(ds, func(ps *esdb.PersistentSubscription, evs []*esdb.ResolvedEvent) error {
		return ps.Nack(reason, action, evs...)
	})
}

// maxIDsPerMessage keeps ack messages well below gRPC message limits.
const maxIDsPerMessage = 2000

func each(ds []*Delivery, fn func(*esdb.PersistentSubscription, []*esdb.ResolvedEvent) error) error {
	var errs []error
	for len(ds) > 0 {
		cn := ds[0].conn
		var evs []*esdb.ResolvedEvent
		rest := ds[:0:0]
		for _, d := range ds {
			if d.conn == cn && len(evs) < maxIDsPerMessage {
				evs = append(evs, d.Event)
			} else {
				rest = append(rest, d)
			}
		}
		cn.mu.Lock()
		err := fn(cn.ps, evs)
		cn.mu.Unlock()
		if err != nil {
			errs = append(errs, err)
		}
		ds = rest
	}
	return errors.Join(errs...)
}

func code(err error) esdb.ErrorCode {
	var e *esdb.Error
	if errors.As(err, &e) {
		return e.Code()
	}
	return -1
}
