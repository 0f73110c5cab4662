// Package esdbtest is a KurrentDB/EventStoreDB-compatible test server: an
// event log with the gRPC Streams and PersistentSubscriptions services, the
// standard system projections and a slice of the classic HTTP API, so that
// code using EventStore-Client-Go can be tested without a real server. It
// is a test and demo tool, never a production store.
package esdbtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/gossip"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/serverfeatures"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"

	"github.com/ditto-replicator/ditto/internal/pbwire"
)

// Options configure a server. The zero value is a TLS server with a fresh
// self-signed certificate on a random loopback port, memory only.
type Options struct {
	// Addr is the listen address; default 127.0.0.1:0 (a random port).
	Addr string
	// Insecure serves plaintext (h2c) and allows every call, like
	// EVENTSTORE_INSECURE=true. Default: TLS with basic auth.
	Insecure bool
	// Dir keeps the log in an append-only file there; "" keeps it in memory.
	Dir string
	// CertFile and KeyFile are the PEM certificate and key to serve; when
	// empty a self-signed certificate for localhost and 127.0.0.1 is made.
	CertFile, KeyFile string
	// MaxAppendSize limits the total size of one append; default
	// DefaultMaxAppendSize (1 MiB, the v24.10 server default).
	MaxAppendSize int
	// MaxAppendEventSize limits the size of each event of an append
	// (data + metadata + 2 × type length); 0, the v24.10 default, means no
	// per-event limit. KurrentDB 25 uses 16 MiB.
	MaxAppendEventSize int
	// DisableBatchAppend serves Streams.BatchAppend as Unimplemented and
	// does not advertise it, like servers before 21.10.
	DisableBatchAppend bool
	// LeaderAddr, if set, makes this node a follower of the node at that
	// host:port for BatchAppend and persistent-subscription reads: a
	// BatchAppend that requires the leader fails at its first write, and
	// every read at its options, with the not-leader error naming it (§6).
	LeaderAddr string
}

// Server is a running test server.
type Server struct {
	opts     Options
	store    *Store
	ln       net.Listener
	http     *http.Server
	grpc     *grpc.Server
	streams  *streamsService
	ps       *persistentService
	caFile   string
	tempDir  string
	grpcLn   *connListener // HTTP/2 connections, for the gRPC server
	httpLn   *connListener // HTTP/1.1 connections, for the HTTP API
	wg       sync.WaitGroup
	closeErr error
	once     sync.Once
}

// serverCodec is pbwire's codec, which also sends the deliveries the Read
// handler has already wrapped for the transport (psWire) as they are.
type serverCodec struct{ pbwire.Codec }

// Marshal implements encoding.CodecV2.
func (c serverCodec) Marshal(v any) (mem.BufferSlice, error) {
	if w, ok := v.(*psWire); ok {
		return w.data, nil
	}
	return c.Codec.Marshal(v)
}

// serverVersion is what ServerFeatures reports: ≥ 23.10 so that the client
// trusts stream positions and CaughtUp messages, and purely numeric (§0).
const serverVersion = "24.10.0"

// maxSendMsgSize keeps every server message under the client's 17 MiB
// receive limit (§0).
const maxSendMsgSize = 16 << 20

// StartServer starts a server and returns once it accepts connections.
func StartServer(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.MaxAppendSize <= 0 {
		opts.MaxAppendSize = DefaultMaxAppendSize
	}
	store, err := NewStore(opts.Dir)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, store: store}
	if err := s.start(); err != nil {
		store.Close()
		if s.tempDir != "" {
			os.RemoveAll(s.tempDir)
		}
		return nil, err
	}
	return s, nil
}

func (s *Server) start() error {
	var tlsConf *tls.Config
	if !s.opts.Insecure {
		cert, err := s.certificate()
		if err != nil {
			return err
		}
		// Server preference order decides ALPN: see route.
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1", "h2"}}
	}
	ps, err := newPersistentService(s.store, s.opts.LeaderAddr)
	if err != nil {
		return fmt.Errorf("start persistent subscriptions: %w", err)
	}
	s.ps = ps
	s.streams = &streamsService{store: s.store, maxAppendSize: s.opts.MaxAppendSize,
		maxEventSize: s.opts.MaxAppendEventSize, noBatchAppend: s.opts.DisableBatchAppend,
		leader: s.opts.LeaderAddr,
		done:   make(chan struct{})}
	auth := authenticator{insecure: s.opts.Insecure}
	recvLimit := max(s.opts.MaxAppendSize+(64<<10), 4<<20)
	s.grpc = grpc.NewServer(
		// Deliveries are sent as encoded here, BatchAppend and acks go
		// through generated code (package pbwire).
		grpc.ForceServerCodecV2(serverCodec{}),
		grpc.MaxRecvMsgSize(recvLimit),
		grpc.MaxSendMsgSize(maxSendMsgSize),
		// The client pings every 10 s even without calls (§0).
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(auth.unary),
		grpc.ChainStreamInterceptor(auth.stream),
	)
	streams.RegisterStreamsServer(s.grpc, s.streams)
	persistent.RegisterPersistentSubscriptionsServer(s.grpc, ps)
	serverfeatures.RegisterServerFeaturesServer(s.grpc, featuresService{batchAppend: !s.opts.DisableBatchAppend})
	gossip.RegisterGossipServer(s.grpc, gossipService{})

	ln, err := net.Listen("tcp", s.opts.Addr)
	if err != nil {
		ps.Close()
		return fmt.Errorf("listen on %s: %w", s.opts.Addr, err)
	}
	s.ln = ln
	// One port serves gRPC and the classic HTTP API, as a real node does.
	// Connections are split by protocol: HTTP/2 goes to grpc-go's own
	// transport (faster than grpc.Server.ServeHTTP, and it applies the
	// keepalive policy), HTTP/1.1 to net/http. With TLS the split follows
	// ALPN, preferring http/1.1: gRPC clients offer only h2, while curl and
	// browsers offer both and so get the HTTP API.
	s.grpcLn = newConnListener(ln.Addr())
	s.httpLn = newConnListener(ln.Addr())
	s.http = &http.Server{Handler: s.httpAPI(auth), ReadHeaderTimeout: 10 * time.Second}
	s.wg.Add(3)
	go func() {
		defer s.wg.Done()
		s.acceptLoop(tlsConf)
	}()
	go func() {
		defer s.wg.Done()
		s.grpc.Serve(s.grpcLn) // returns when the server stops
	}()
	go func() {
		defer s.wg.Done()
		s.http.Serve(s.httpLn) // returns when the server closes
	}()
	return nil
}

// http2Preface opens every HTTP/2 connection (h2c with prior knowledge).
const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// acceptLoop hands every accepted connection to route until the listener
// closes.
func (s *Server) acceptLoop(tlsConf *tls.Config) {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		go s.route(c, tlsConf)
	}
}

// route finds out which protocol a connection speaks and passes it to the
// gRPC or the HTTP server. The TLS handshake or the first bytes must come
// within 10 s.
func (s *Server) route(c net.Conn, tlsConf *tls.Config) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if tlsConf != nil {
		tc := tls.Server(c, tlsConf)
		if err := tc.Handshake(); err != nil {
			c.Close()
			return
		}
		tc.SetDeadline(time.Time{})
		if tc.ConnectionState().NegotiatedProtocol == "h2" {
			s.grpcLn.deliver(tc)
		} else {
			s.httpLn.deliver(tc)
		}
		return
	}
	var buf [len(http2Preface)]byte
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if !strings.HasPrefix(http2Preface, string(buf[:n])) {
			break // not HTTP/2: HTTP/1.x
		}
		if err != nil {
			c.Close()
			return
		}
	}
	c.SetDeadline(time.Time{})
	pc := &peekedConn{Conn: c, peeked: buf[:n]}
	if string(buf[:n]) == http2Preface {
		s.grpcLn.deliver(pc)
	} else {
		s.httpLn.deliver(pc)
	}
}

// peekedConn replays the bytes route read before the rest of the stream.
type peekedConn struct {
	net.Conn
	peeked []byte
}

func (p *peekedConn) Read(b []byte) (int, error) {
	if len(p.peeked) > 0 {
		n := copy(b, p.peeked)
		p.peeked = p.peeked[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// connListener is a net.Listener fed with connections by route.
type connListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }

// deliver passes c to the server accepting on l, or closes it when l is
// closed.
func (l *connListener) deliver(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

// Start starts a server for a test, like httptest: it fails the test if the
// server cannot start and closes it when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := StartServer(opts)
	if err != nil {
		t.Fatalf("start esdbtest server: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close esdbtest server: %v", err)
		}
	})
	return s
}

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// ConnectionString is an esdb:// connection string for this server. With
// TLS it carries the default admin credentials and skips certificate
// verification; use CAFile with tlsCAFile= to verify instead.
func (s *Server) ConnectionString() string {
	if s.opts.Insecure {
		return fmt.Sprintf("esdb://%s?tls=false", s.Addr())
	}
	return fmt.Sprintf("esdb://admin:changeit@%s?tls=true&tlsverifycert=false", s.Addr())
}

// CAFile is a PEM file with the certificate that signs the server's
// certificate (the self-signed certificate itself, or CertFile when one was
// given); "" in insecure mode.
func (s *Server) CAFile() string { return s.caFile }

// Store is the server's event store, for direct inspection in tests.
func (s *Server) Store() *Store { return s.store }

// Close stops the server: open subscriptions end, connections close, the
// store's file is flushed and closed.
func (s *Server) Close() error {
	s.once.Do(func() {
		close(s.streams.done)
		s.ps.Close()
		s.ln.Close()
		s.grpcLn.Close()
		s.httpLn.Close()
		// Streaming calls end through done and ps.Close; Stop cuts
		// whatever is left.
		s.grpc.Stop()
		s.http.Close()
		s.wg.Wait()
		s.closeErr = s.store.Close()
		if s.tempDir != "" {
			os.RemoveAll(s.tempDir)
		}
	})
	return s.closeErr
}

// featuresService answers ServerFeatures.GetSupportedMethods (§1). Method
// and service names are lower-cased, as the server reports them.
type featuresService struct {
	serverfeatures.UnimplementedServerFeaturesServer
	batchAppend bool // advertise Streams.BatchAppend
}

func (f featuresService) GetSupportedMethods(context.Context, *shared.Empty) (*serverfeatures.SupportedMethods, error) {
	const (
		streamsSvc = "event_store.client.streams.streams"
		psSvc      = "event_store.client.persistent_subscriptions.persistentsubscriptions"
		gossipSvc  = "event_store.client.gossip.gossip"
	)
	m := &serverfeatures.SupportedMethods{EventStoreServerVersion: serverVersion}
	add := func(svc, method string, features ...string) {
		m.Methods = append(m.Methods, &serverfeatures.SupportedMethod{ServiceName: svc, MethodName: method, Features: features})
	}
	add(streamsSvc, "read", "position", "events")
	for _, method := range []string{"append", "delete", "tombstone"} {
		add(streamsSvc, method)
	}
	if f.batchAppend {
		add(streamsSvc, "batchappend", "deadline_duration")
	}
	for _, method := range []string{"create", "update", "delete", "read", "getinfo", "replayparked", "list", "restartsubsystem"} {
		add(psSvc, method, "stream", "all")
	}
	add(gossipSvc, "read")
	return m, nil
}

// gossipService answers Gossip.Read with this node as the only member, the
// leader, at exactly the address the client dialled (its :authority), so
// that cluster-mode discovery connects back to the same endpoint.
type gossipService struct {
	gossip.UnimplementedGossipServer
}

// instanceID identifies this process in gossip.
var instanceID = uuid.New()

func (gossipService) Read(ctx context.Context, _ *shared.Empty) (*gossip.ClusterInfo, error) {
	host, port := "127.0.0.1", 0
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if a := md.Get(":authority"); len(a) > 0 {
			if h, p, err := net.SplitHostPort(a[0]); err == nil {
				host = h
				port, _ = strconv.Atoi(p)
			}
		}
	}
	return &gossip.ClusterInfo{Members: []*gossip.MemberInfo{{
		InstanceId:   uuidToProto(instanceID, false),
		TimeStamp:    time.Now().UnixNano() / 100,
		State:        gossip.MemberInfo_Leader,
		IsAlive:      true,
		HttpEndPoint: &gossip.EndPoint{Address: host, Port: uint32(port)},
	}}}, nil
}
