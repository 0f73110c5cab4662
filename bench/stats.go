package main

import (
	"math"
	"slices"
	"time"
)

// percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method: the smallest value such that at least p% of the
// values are less than or equal to it. It returns 0 for no values.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// latencies summarises a set of lags.
type latencies struct {
	N   int
	P50 time.Duration
	P99 time.Duration
	Max time.Duration
}

func summarize(lags []time.Duration) latencies {
	s := slices.Clone(lags)
	slices.Sort(s)
	l := latencies{N: len(s), P50: percentile(s, 50), P99: percentile(s, 99)}
	if len(s) > 0 {
		l.Max = s[len(s)-1]
	}
	return l
}

// rate is events per second; 0 when nothing was measured.
func rate(events int, d time.Duration) float64 {
	if events <= 0 || d <= 0 {
		return 0
	}
	return float64(events) / d.Seconds()
}

// ratio is a/b, or 0 when either is unknown.
func ratio(a, b float64) float64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	return a / b
}

// ms converts a duration to float milliseconds for printing and JSON.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
