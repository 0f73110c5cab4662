package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/verify"
)

// The test server's TLS mode checks Basic credentials; its accounts are
// admin and ops, both with this password.
const serverPassword = "changeit"

// tlsEnv is a TLS source and destination with clients that verify their
// certificates through tlsCAFile.
func tlsEnv(t *testing.T) (e *env, srcCS, dstCS string) {
	t.Helper()
	src := esdbtest.Start(t, esdbtest.Options{})
	dst := esdbtest.Start(t, esdbtest.Options{})
	srcCS = "esdb://admin:" + serverPassword + "@" + src.Addr() + "?tls=true&tlsCAFile=" + src.CAFile()
	dstCS = "esdb://admin:" + serverPassword + "@" + dst.Addr() + "?tls=true&tlsCAFile=" + dst.CAFile()
	e = &env{src: src, dst: dst, srcC: mustClient(t, srcCS), dstC: mustClient(t, dstCS)}
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	return e, srcCS, dstCS
}

// TestTLSEndToEnd replicates over TLS with certificate verification on
// (the servers' CA given with tlsCAFile=), and checks that verification is
// on unless the connection string turns it off.
func TestTLSEndToEnd(t *testing.T) {
	e, srcCS, dstCS := tlsEnv(t)
	streams := e.seed(t, "customer", 5, 4)

	t.Run("verification on without a trusted CA", func(t *testing.T) {
		metrics := testutil.FreeAddr(t)
		noCA := strings.Replace(srcCS, "&tlsCAFile="+e.src.CAFile(), "", 1)
		p := startProcess(t, baseEnv(noCA, dstCS, map[string]string{"DITTO_METRICS_ADDRESS": metrics}))
		testutil.Eventually(t, 30*time.Second, "certificate rejected, retrying, not ready", func() bool {
			code, _ := readyStatus(metrics)
			return code == http.StatusServiceUnavailable && strings.Contains(p.output.String(), "certificate signed by unknown authority")
		})
		if rep := e.compare(t, verify.Options{Streams: streams}); rep.DestinationEvents != 0 {
			t.Fatalf("%d events replicated through an unverified connection", rep.DestinationEvents)
		}
		stopGracefully(t, p)
	})
	t.Run("verified with tlsCAFile", func(t *testing.T) {
		p := startProcess(t, baseEnv(srcCS, dstCS, nil))
		e.waitIdentical(t, verify.Options{Streams: streams})
		stopGracefully(t, p)
	})
	t.Run("verification turned off with tlsVerifyCert=false", func(t *testing.T) {
		more := e.seed(t, "customer", 2, 2)
		skip := "esdb://admin:" + serverPassword + "@" + e.src.Addr() + "?tls=true&tlsVerifyCert=false"
		p := startProcess(t, baseEnv(skip, dstCS, nil))
		e.waitIdentical(t, verify.Options{Streams: more})
		stopGracefully(t, p)
	})
}

// TestNoSecretInOutput runs ditto (as a process and in-process, at debug
// level) over TLS with credentials, with wrong credentials and with a
// malformed connection string; runs `ditto config` and `ditto verify`; reads
// /metrics and the health endpoints; and greps all of it for the passwords.
func TestNoSecretInOutput(t *testing.T) {
	e, srcCS, dstCS := tlsEnv(t)
	streams := e.seed(t, "customer", 3, 3)
	const wrong = "Wr0ng-S3cret-9931"
	var all bytes.Buffer
	collect := func(what, s string) {
		all.WriteString("=== " + what + "\n" + s + "\n")
	}

	metrics := testutil.FreeAddr(t)
	p := startProcess(t, baseEnv(srcCS, dstCS, map[string]string{"DITTO_METRICS_ADDRESS": metrics, "DITTO_LOG_LEVEL": "debug"}))
	e.waitIdentical(t, verify.Options{Streams: streams})
	for _, path := range []string{"/metrics", "/health/ready", "/health/live"} {
		_, body := get(t, "http://"+metrics+path)
		collect(path, body)
	}
	stopGracefully(t, p)
	collect("ditto run", p.output.String())

	r := startDitto(t, e, map[string]string{"DITTO_SOURCE_CONNECTION_STRING": srcCS, "DITTO_DESTINATION_CONNECTION_STRING": dstCS})
	more := e.seed(t, "customer", 2, 2)
	e.waitIdentical(t, verify.Options{Streams: more})
	r.stop(t)
	collect("in-process ditto", r.logs.String())

	for name, env := range map[string]map[string]string{
		"wrong source password":      baseEnv(strings.Replace(srcCS, serverPassword, wrong, 1), dstCS, map[string]string{"DITTO_LOG_LEVEL": "debug"}),
		"wrong destination password": baseEnv(srcCS, strings.Replace(dstCS, serverPassword, wrong, 1), map[string]string{"DITTO_LOG_LEVEL": "debug"}),
		"malformed source":           baseEnv("esdb://admin:"+wrong+"@127.0.0.1:notaport?tls=true", dstCS, nil),
		"malformed destination":      baseEnv(srcCS, "esdb://admin:"+wrong+"@h:1:2?tls=true", nil),
		"password as a query option": baseEnv("esdb://127.0.0.1:1?tls=maybe&password="+wrong, dstCS, nil),
	} {
		p := startProcess(t, env)
		if code := p.exitCode(t); code == 0 {
			t.Errorf("%s: exit code 0", name)
		}
		collect(name, p.output.String())
	}

	p = startProcess(t, baseEnv(srcCS, dstCS, nil), "config")
	p.exitCode(t)
	collect("ditto config", p.output.String())
	p = startProcess(t, baseEnv(srcCS, dstCS, nil), "verify", "--streams", streams[0])
	if code := p.exitCode(t); code != 0 {
		t.Errorf("ditto verify exited %d:\n%s", code, p.output)
	}
	collect("ditto verify", p.output.String())
	p = startProcess(t, baseEnv(srcCS, strings.Replace(dstCS, serverPassword, wrong, 1), nil), "verify", "--streams", streams[0])
	if code := p.exitCode(t); code == 0 {
		t.Errorf("ditto verify with a wrong password exited 0")
	}
	collect("ditto verify, wrong password", p.output.String())

	out := all.String()
	for _, secret := range []string{serverPassword, wrong} {
		if i := strings.Index(out, secret); i >= 0 {
			lo, hi := max(0, i-300), min(len(out), i+100)
			t.Errorf("the output contains the password %q:\n…%s…", secret, out[lo:hi])
		}
	}
	// The check is only worth something if the runs printed the
	// connection strings, redacted.
	if !strings.Contains(out, "admin:xxxxx@") {
		t.Fatalf("no redacted connection string in the output; the check proves nothing:\n%s", tail(out, 3000))
	}
}

// pki is a test CA with a server certificate for 127.0.0.1 and a client
// certificate, written as PEM files.
type pki struct {
	dir                       string
	caFile, userCert, userKey string
	server                    tls.Certificate
	pool                      *x509.CertPool
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir()}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ditto test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	p.pool = x509.NewCertPool()
	p.pool.AddCert(ca)
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) (certPEM, keyPEM []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	}
	write := func(name string, b []byte) string {
		path := filepath.Join(p.dir, name)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	p.caFile = write("ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	sc, sk := issue(2, "127.0.0.1", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	if p.server, err = tls.X509KeyPair(sc, sk); err != nil {
		t.Fatal(err)
	}
	uc, uk := issue(3, "admin", x509.ExtKeyUsageClientAuth, nil)
	p.userCert, p.userKey = write("user-admin.crt", uc), write("user-admin.key", uk)
	return p
}

// mtlsFront terminates TLS in front of an insecure test server and accepts
// only clients with a certificate signed by the test CA. The test server
// itself never asks for client certificates, so this is how ditto's client
// certificate support is checked end to end. It returns the front's address
// and a counter of rejected handshakes.
func mtlsFront(t *testing.T, p *pki, backend string) (string, *atomic.Int64) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{p.server}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: p.pool, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	rejected := &atomic.Int64{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if err := tc.Handshake(); err != nil {
					rejected.Add(1)
					return
				}
				tc.SetDeadline(time.Time{})
				b, err := net.Dial("tcp", backend)
				if err != nil {
					return
				}
				defer b.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(b, tc); done <- struct{}{} }()
				go func() { io.Copy(tc, b); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return ln.Addr().String(), rejected
}

// TestClientCertificate: the v4.2.0 client presents a client certificate
// given with userCertFile= and userKeyFile=; ditto passes the connection
// string through, so a server that requires one accepts ditto.
func TestClientCertificate(t *testing.T) {
	p := newPKI(t)
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 3, 3)
	front, rejected := mtlsFront(t, p, e.src.Addr())
	base := "esdb://admin:" + serverPassword + "@" + front + "?tls=true&tlsCAFile=" + p.caFile

	t.Run("without a client certificate", func(t *testing.T) {
		metrics := testutil.FreeAddr(t)
		proc := startProcess(t, baseEnv(base, e.dst.ConnectionString(), map[string]string{"DITTO_METRICS_ADDRESS": metrics}))
		testutil.Eventually(t, 30*time.Second, "handshake rejected, retrying, not ready", func() bool {
			code, _ := readyStatus(metrics)
			return rejected.Load() > 0 && code == http.StatusServiceUnavailable &&
				strings.Contains(proc.output.String(), "cannot connect to subscription; retrying")
		})
		stopGracefully(t, proc)
	})
	t.Run("with userCertFile and userKeyFile", func(t *testing.T) {
		if rep := e.compare(t, verify.Options{Streams: streams}); rep.DestinationEvents != 0 {
			t.Fatalf("%d events replicated without a client certificate", rep.DestinationEvents)
		}
		before := rejected.Load()
		cs := base + "&userCertFile=" + p.userCert + "&userKeyFile=" + p.userKey
		proc := startProcess(t, baseEnv(cs, e.dst.ConnectionString(), nil))
		e.waitIdentical(t, verify.Options{Streams: streams})
		if rejected.Load() != before {
			t.Fatal("a handshake with the client certificate was rejected")
		}
		stopGracefully(t, proc)
	})
}
