package esdbtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

type userKey struct{}

// withUser records the authenticated user name on the call's context.
func withUser(ctx context.Context, user string) context.Context {
	return context.WithValue(ctx, userKey{}, user)
}

// userFromContext is the authenticated user of the call, or "anonymous".
func userFromContext(ctx context.Context) string {
	if u, ok := ctx.Value(userKey{}).(string); ok && u != "" {
		return u
	}
	return "anonymous"
}

// users are the default accounts of a fresh server.
var users = map[string]string{"admin": "changeit", "ops": "changeit"}

// authenticator checks the Basic credentials the client sends with TLS.
// Missing credentials mean anonymous, which this server lets through; wrong
// ones fail with Unauthenticated (§1). In insecure mode nothing is checked,
// as the client never sends credentials without TLS.
type authenticator struct {
	insecure bool
}

// check returns the user named by an authorization header value.
func (a authenticator) check(header string) (string, bool) {
	if a.insecure || header == "" {
		return "", true
	}
	const prefix = "Basic "
	if len(header) < len(prefix) || !strings.EqualFold(header[:len(prefix)], prefix) {
		return "", false
	}
	raw, err := base64.StdEncoding.DecodeString(header[len(prefix):])
	if err != nil {
		return "", false
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok {
		return "", false
	}
	want, known := users[user]
	if !known || subtle.ConstantTimeCompare([]byte(want), []byte(pass)) != 1 {
		return "", false
	}
	return user, true
}

func (a authenticator) authenticate(ctx context.Context) (context.Context, error) {
	var header string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("authorization"); len(v) > 0 {
			header = v[0]
		}
	}
	user, ok := a.check(header)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "Bad username or password.")
	}
	if user != "" {
		ctx = withUser(ctx, user)
	}
	return ctx, nil
}

func (a authenticator) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := a.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (a authenticator) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := a.authenticate(ss.Context())
	if err != nil {
		if info.IsClientStream && !info.IsServerStream {
			// Read the request to its end first. Answering while the
			// client still sends makes its Send fail with a bare EOF,
			// which the Go client reports instead of the status.
			for ss.RecvMsg(new(emptypb.Empty)) == nil {
			}
		}
		return err
	}
	return handler(srv, &userStream{ServerStream: ss, ctx: ctx})
}

// userStream carries the authenticated context into a streaming handler.
type userStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (u *userStream) Context() context.Context { return u.ctx }

// certificate loads the configured key pair, or makes a self-signed one
// (SANs localhost and 127.0.0.1, valid as its own CA) and writes it to a
// temporary PEM file for CAFile.
func (s *Server) certificate() (tls.Certificate, error) {
	if s.opts.CertFile != "" || s.opts.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(s.opts.CertFile, s.opts.KeyFile)
		if err != nil {
			return cert, fmt.Errorf("load certificate: %w", err)
		}
		s.caFile = s.opts.CertFile
		return cert, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "esdbtest"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate: %w", err)
	}
	dir, err := os.MkdirTemp("", "esdbtest-tls-")
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate dir: %w", err)
	}
	s.tempDir = dir
	s.caFile = filepath.Join(dir, "ca.pem")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(s.caFile, certPEM, 0o644); err != nil {
		return tls.Certificate{}, fmt.Errorf("write certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
