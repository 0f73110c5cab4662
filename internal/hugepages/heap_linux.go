//go:build linux && (amd64 || arm64)

package hugepages

import (
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// Heap marks the next size bytes of heap address space the Go runtime maps
// as eligible for transparent huge pages, when the system's mode is
// "madvise" (under "always" the heap gets them anyway, under "never" not at
// all). It reports whether it marked anything.
//
// Go offers no way to advise its heap, so Heap has the runtime map the
// space itself: with the collector off, it allocates one block of size
// bytes (fresh memory, which the runtime neither zeroes nor touches), marks
// the block's whole huge pages with madvise(MADV_HUGEPAGE) and drops it.
// No collection sees the block live, so it does not raise the heap's goal;
// the next one frees it. The space stays mapped and marked, and the heap's
// next allocations, which the runtime takes at the lowest free addresses,
// come from it. Call it early, before the heap has grown; it takes about a
// millisecond. Resident memory is not raised by the size, only rounded up
// to whole huge pages where the heap touches them. Under a memory limit
// (GOMEMLIMIT), which makes the runtime collect even with the collector
// off, the block is at most a quarter of the limit.
func Heap(size int) (bool, error) {
	if Mode() != "madvise" {
		return false, nil
	}
	if limit := debug.SetMemoryLimit(-1); limit < math.MaxInt64 {
		size = min(size, int(limit/4))
	}
	if size <= 0 {
		return false, nil
	}
	gc := debug.SetGCPercent(-1)
	beg, end, err := advise(size)
	debug.SetGCPercent(gc)
	return end > beg && err == nil, err
}

// advise allocates size bytes, marks their whole huge pages and returns
// the marked range. The block is garbage once advise returns.
func advise(size int) (beg, end uintptr, err error) {
	huge := pageSize()
	b := make([]byte, size)
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	beg = (start + huge - 1) &^ (huge - 1)
	end = (start + uintptr(size)) &^ (huge - 1)
	if end <= beg {
		return 0, 0, nil
	}
	if err := syscall.Madvise(b[beg-start:end-start], syscall.MADV_HUGEPAGE); err != nil {
		return 0, 0, fmt.Errorf("madvise(MADV_HUGEPAGE) on %d bytes of heap: %w", end-beg, err)
	}
	return beg, end, nil
}

// pageSizeFile holds the size of a transparent huge page in bytes.
const pageSizeFile = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"

// pageSize is the size of a transparent huge page, 2 MiB unless the
// kernel says otherwise.
func pageSize() uintptr {
	if b, err := os.ReadFile(pageSizeFile); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 && n&(n-1) == 0 {
			return uintptr(n)
		}
	}
	return 2 << 20
}
