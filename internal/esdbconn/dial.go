package esdbconn

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/gossip"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/serverfeatures"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// maxRecvMsgSize matches the client's own limit, above the server's largest
// record.
const maxRecvMsgSize = 17 << 20

// DialLeader opens a gRPC connection of the caller's own to the node of conf
// that takes writes, for calls made without the client (BatchAppend, and
// persistent-subscription reads decoded straight from the wire). It
// reads TLS, credentials and keepalive from conf as the client does. A
// single-node address is dialled as it is; with gossip seeds (or DNS
// discovery) each seed is asked for the cluster's members, in random order,
// and the live leader is dialled. leader, if not empty, is a host:port a
// node named as leader (in a not-leader answer) and is dialled directly.
// extra options come after those read from conf.
func DialLeader(ctx context.Context, conf *esdb.Configuration, leader string, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts, err := dialOptions(conf)
	if err != nil {
		return nil, err
	}
	opts = append(opts, extra...)
	if leader != "" {
		return grpc.NewClient(leader, opts...)
	}
	var seeds []string
	switch {
	case len(conf.GossipSeeds) > 0:
		for _, s := range conf.GossipSeeds {
			seeds = append(seeds, s.String())
		}
	case conf.DnsDiscover:
		seeds = []string{conf.Address}
	default:
		return grpc.NewClient(conf.Address, opts...)
	}
	rand.Shuffle(len(seeds), func(i, j int) { seeds[i], seeds[j] = seeds[j], seeds[i] })
	timeout := time.Duration(conf.GossipTimeout) * time.Second
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	var errs []error
	for _, seed := range seeds {
		addr, err := askLeader(ctx, seed, timeout, opts)
		if err != nil {
			errs = append(errs, fmt.Errorf("gossip from %s: %w", seed, err))
			continue
		}
		return grpc.NewClient(addr, opts...)
	}
	return nil, fmt.Errorf("no seed named a live leader: %w", errors.Join(errs...))
}

// Leader holds one connection of the caller's own to the leader of conf,
// dialled on first use and again after Drop: a connection stays on the node
// it was made to, so after a leader change it must be made again.
type Leader struct {
	conf  *esdb.Configuration
	extra []grpc.DialOption

	mu     sync.Mutex
	conn   *grpc.ClientConn
	hint   string // the leader a not-leader answer named
	closed bool
}

// NewLeader returns a Leader for conf, whose connections are dialled with
// the extra options too; nothing is dialled yet.
func NewLeader(conf *esdb.Configuration, extra ...grpc.DialOption) *Leader {
	return &Leader{conf: conf, extra: extra}
}

// Conn returns the current connection, dialling one if there is none.
func (l *Leader) Conn(ctx context.Context) (*grpc.ClientConn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("connection closed")
	}
	if l.conn == nil {
		conn, err := DialLeader(ctx, l.conf, l.hint, l.extra...)
		if err != nil {
			return nil, err
		}
		l.conn, l.hint = conn, ""
	}
	return l.conn, nil
}

// Drop closes conn after a call on it failed in a way that says the leader
// may have moved, so that the next Conn dials again: to leader if a
// not-leader answer named one (see NotLeader), else through discovery. A
// conn that is no longer the current one is left alone.
func (l *Leader) Drop(conn *grpc.ClientConn, leader string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != conn || conn == nil {
		return
	}
	l.conn.Close()
	l.conn, l.hint = nil, leader
}

// Close closes the connection, which ends every call on it.
func (l *Leader) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.conn != nil {
		l.conn.Close()
		l.conn = nil
	}
}

// NotLeader returns the host:port that a not-leader answer's trailers name
// as the leader, or "" if they name none.
func NotLeader(md metadata.MD) string {
	host, port := md.Get("leader-endpoint-host"), md.Get("leader-endpoint-port")
	if len(host) == 0 || len(port) == 0 {
		return ""
	}
	return net.JoinHostPort(host[0], port[0])
}

func askLeader(ctx context.Context, seed string, timeout time.Duration, opts []grpc.DialOption) (string, error) {
	conn, err := grpc.NewClient(seed, opts...)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	info, err := gossip.NewGossipClient(conn).Read(ctx, &shared.Empty{})
	if err != nil {
		return "", err
	}
	for _, m := range info.GetMembers() {
		if m.GetIsAlive() && m.GetState() == gossip.MemberInfo_Leader && m.GetHttpEndPoint() != nil {
			ep := m.GetHttpEndPoint()
			return fmt.Sprintf("%s:%d", ep.GetAddress(), ep.GetPort()), nil
		}
	}
	return "", errors.New("no live leader among the members")
}

func dialOptions(conf *esdb.Configuration) ([]grpc.DialOption, error) {
	creds := insecure.NewCredentials()
	if !conf.DisableTLS {
		tc := &tls.Config{InsecureSkipVerify: conf.SkipCertificateVerification, RootCAs: conf.RootCAs}
		if conf.UserCertFile != "" && conf.UserKeyFile != "" {
			cert, err := tls.LoadX509KeyPair(conf.UserCertFile, conf.UserKeyFile)
			if err != nil {
				return nil, fmt.Errorf("loading the user certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		creds = credentials.NewTLS(tc)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)),
	}
	if conf.Username != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(basicAuth("Basic "+base64.StdEncoding.EncodeToString([]byte(conf.Username+":"+conf.Password)))))
	}
	if conf.KeepAliveInterval >= 0 {
		opts = append(opts, grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: conf.KeepAliveInterval, Timeout: conf.KeepAliveTimeout, PermitWithoutStream: true}))
	}
	return opts, nil
}

// basicAuth sends the connection string's credentials with every call, as
// the client does, on plaintext connections too.
type basicAuth string

func (b basicAuth) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": string(b)}, nil
}

func (basicAuth) RequireTransportSecurity() bool { return false }

// Supports reports whether the node behind conn offers the given method of
// the given service (both lower-cased, as ServerFeatures names them). A
// server without ServerFeatures offers none of the newer calls.
func Supports(ctx context.Context, conn *grpc.ClientConn, service, method string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, err := serverfeatures.NewServerFeaturesClient(conn).GetSupportedMethods(ctx, &shared.Empty{})
	if err != nil {
		if status.Code(err) == codes.Unimplemented {
			return false, nil
		}
		return false, err
	}
	for _, sm := range m.GetMethods() {
		if sm.GetServiceName() == service && sm.GetMethodName() == method {
			return true, nil
		}
	}
	return false, nil
}
