// Package hugepages asks Linux for transparent huge pages for the Go heap.
//
// Go maps its heap in 4 KiB pages unless the system's THP mode is "always",
// and Linux ships with "madvise" by default, where only memory a program
// marks gets huge pages. Every first touch of a 4 KiB page is then a page
// fault; on virtual machines that shadow the guest's page tables one costs
// about 10 µs (about 40 times a 2 MiB page's fault per 4 KiB it covers),
// and the 16,000 that ditto's heap takes to grow to its working size were a
// fifth of its CPU in the bench's scenario (a). See bench/README.md.
package hugepages

import (
	"os"
	"strings"
)

// modeFile holds the system-wide THP mode, for example
// "always [madvise] never" (the bracketed word is the mode in force).
const modeFile = "/sys/kernel/mm/transparent_hugepage/enabled"

// Mode is the system's THP mode: "always", "madvise" or "never", or "" when
// it cannot be read (not Linux, no THP support, sysfs not mounted).
func Mode() string {
	b, err := os.ReadFile(modeFile)
	if err != nil {
		return ""
	}
	return parseMode(string(b))
}

// parseMode returns the bracketed word of a THP mode file, or "".
func parseMode(s string) string {
	for _, f := range strings.Fields(s) {
		if len(f) > 2 && f[0] == '[' && f[len(f)-1] == ']' {
			return f[1 : len(f)-1]
		}
	}
	return ""
}
