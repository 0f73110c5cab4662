package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/ditto-replicator/ditto/config"
)

// healthTimeout bounds one `ditto health` call; a ditto that cannot answer
// /health/ready within it is as good as not ready.
const healthTimeout = 3 * time.Second

// health is `ditto health`: GET /health/ready of the ditto listening on
// DITTO_METRICS_ADDRESS (on 127.0.0.1 when it listens on every interface),
// exit 0 on 200 and 1 otherwise. It is the image's HEALTHCHECK, which needs
// a command because the distroless image has no shell or curl; Docker
// reserves exit code 2, so every failure, a bad address included, is 1.
func health(ctx context.Context, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) int {
	url, err := healthURL(lookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "ditto health: %v\n", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "ditto health: %v\n", err)
		return 1
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "ditto health: no answer from %s: %v\n", url, err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	reason := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "ditto health: not ready: %s answered %d: %s\n", url, resp.StatusCode, reason)
		return 1
	}
	fmt.Fprintf(stdout, "ditto health: %s: %s\n", url, reason)
	return 0
}

// healthURL is /health/ready on DITTO_METRICS_ADDRESS, or on its default
// when the variable is not set.
func healthURL(lookupEnv func(string) (string, bool)) (string, error) {
	const name = config.Prefix + "_METRICS_ADDRESS"
	addr, set := lookupEnv(name)
	if !set {
		for _, v := range config.Variables() {
			if v.Name == name {
				addr = v.Default
			}
		}
	}
	if addr == "" {
		return "", fmt.Errorf("%s is empty, which turns the health endpoints off: nothing to ask", name)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%s=%q is not a host:port listen address: %v", name, addr, err)
	}
	if port == "0" {
		return "", fmt.Errorf("%s=%q has no fixed port to ask", name, addr)
	}
	switch host {
	case "", "0.0.0.0", "::":
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/health/ready", nil
}
