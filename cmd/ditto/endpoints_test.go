package main

import (
	"bytes"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Reading the HTTP endpoints of a running ditto.

// get fetches url, failing t if there is no answer.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// readyStatus is /health/ready on addr; 0 and the error while nothing
// answers there (ditto not listening yet, or gone).
func readyStatus(addr string) (int, string) {
	resp, err := http.Get("http://" + addr + "/health/ready")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// scrape returns ditto's /metrics text on addr.
func scrape(t *testing.T, addr string) string {
	t.Helper()
	code, body := get(t, "http://"+addr+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	return body
}

// sample returns the value of the first sample on /metrics at addr whose
// line starts with prefix (a name and labels), or -1.
func sample(t *testing.T, addr, prefix string) float64 {
	t.Helper()
	for _, line := range strings.Split(scrape(t, addr), "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// metricSum adds up the samples of a metric in /metrics text.
func metricSum(text, name string) float64 {
	sum := 0.0
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		sum += v
	}
	return sum
}
