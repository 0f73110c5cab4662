//go:build !(linux && (amd64 || arm64))

package hugepages

// Heap does nothing where the Go heap cannot be advised: it reports false.
func Heap(size int) (bool, error) { return false, nil }
