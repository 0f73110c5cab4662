//go:build linux && (amd64 || arm64)

package hugepages

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// vma is one mapping of /proc/self/smaps with the fields the tests read.
type vma struct {
	start, end  uintptr
	eligible    bool  // THPeligible: 1
	anonHugeKiB int64 // AnonHugePages
}

func smaps(t *testing.T) []vma {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skipf("no /proc/self/smaps: %v", err)
	}
	var out []vma
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(f[0], "-"); ok && !strings.HasSuffix(f[0], ":") {
			s, err1 := strconv.ParseUint(lo, 16, 64)
			e, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil {
				out = append(out, vma{start: uintptr(s), end: uintptr(e)})
				continue
			}
		}
		if len(out) == 0 || len(f) < 2 {
			continue
		}
		v := &out[len(out)-1]
		switch f[0] {
		case "THPeligible:":
			v.eligible = f[1] == "1"
		case "AnonHugePages:":
			v.anonHugeKiB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return out
}

// within returns the mappings that overlap [beg, end).
func within(vs []vma, beg, end uintptr) []vma {
	var out []vma
	for _, v := range vs {
		if v.start < end && v.end > beg {
			out = append(out, v)
		}
	}
	return out
}

func needMadvise(t *testing.T) {
	t.Helper()
	if m := Mode(); m != "madvise" {
		t.Skipf("THP mode is %q here, not madvise: nothing to advise", m)
	}
}

// TestAdviseMarksTheBlock checks that the advised range is eligible for
// huge pages, where anonymous memory mapped alike without the advice is
// not.
func TestAdviseMarksTheBlock(t *testing.T) {
	needMadvise(t)
	plain, err := syscall.Mmap(-1, 0, 16<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(plain)
	p := uintptr(unsafe.Pointer(unsafe.SliceData(plain)))
	beg, end, err := advise(32 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if end-beg < 28<<20 {
		t.Fatalf("advised %d bytes of a 32 MiB block, want all but the unaligned ends", end-beg)
	}
	vs := smaps(t)
	got := within(vs, beg, end)
	if len(got) == 0 {
		t.Fatalf("no mapping covers the advised range %#x-%#x", beg, end)
	}
	for _, v := range got {
		if !v.eligible {
			t.Errorf("mapping %#x-%#x in the advised range is not THP-eligible", v.start, v.end)
		}
	}
	for _, v := range within(vs, p, p+uintptr(len(plain))) {
		if v.eligible {
			t.Errorf("mapping %#x-%#x, not advised, is THP-eligible", v.start, v.end)
		}
	}
}

// helperEnv makes the test binary run TestHelperHeap in a process of its own.
const helperEnv = "DITTO_HUGEPAGES_HELPER"

// TestHeapServesLaterAllocations checks what Heap is for, in a fresh
// process as ditto calls it: the memory the heap allocates afterwards is in
// huge pages, and without the call it is not.
func TestHeapServesLaterAllocations(t *testing.T) {
	needMadvise(t)
	run := func(mode string) int64 {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHeap$", "-test.count=1")
		cmd.Env = append(os.Environ(), helperEnv+"="+mode)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper (%s): %v\n%s", mode, err, out)
		}
		_, v, ok := strings.Cut(string(out), "grew ")
		var kib int64
		if _, err := fmt.Sscanf(v, "%d", &kib); !ok || err != nil {
			t.Fatalf("helper (%s) printed no figure:\n%s", mode, out)
		}
		return kib
	}
	if got := run("heap"); got < 16<<10 {
		t.Errorf("with Heap, 32 MB of allocations added %d KiB of huge pages; want at least 16 MiB", got)
	}
	if got := run("plain"); got != 0 {
		t.Errorf("without Heap, 32 MB of allocations added %d KiB of huge pages; want none", got)
	}
}

// TestHelperHeap is the process TestHeapServesLaterAllocations starts. It
// also fails if the block Heap allocates was live at a collection, which
// would have raised the heap's goal above it.
func TestHelperHeap(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("run by TestHeapServesLaterAllocations")
	}
	const size = 256 << 20
	before := hugeKiB(smaps(t))
	if mode == "heap" {
		if ok, err := Heap(size); err != nil || !ok {
			t.Fatalf("Heap = %v, %v; want true, nil", ok, err)
		}
	}
	keep := make([][]byte, 0, 32<<10)
	for range 32 << 10 {
		b := make([]byte, 1000)
		b[0] = 1
		keep = append(keep, b)
	}
	s := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}}
	metrics.Read(s)
	if goal := s[0].Value.Uint64(); goal >= size {
		t.Errorf("heap goal %d MiB after Heap(%d MiB) and 32 MB of allocations; the block was counted live", goal>>20, size>>20)
	}
	fmt.Printf("huge pages grew %d KiB\n", hugeKiB(smaps(t))-before)
	runtime.KeepAlive(keep)
}

func hugeKiB(vs []vma) int64 {
	var n int64
	for _, v := range vs {
		n += v.anonHugeKiB
	}
	return n
}
