package pbwire

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGeneratedCodeIsCurrent regenerates gen/ into a temporary directory
// with generate.sh (protoc and the plugins at their pinned versions) and
// compares it with the committed code byte for byte, so that gen/ cannot
// drift from the client's .proto files or the generators. .ci/setup installs
// protoc; elsewhere the test is skipped without it.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the protoc plugins")
	}
	if _, err := exec.LookPath("protoc"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("protoc is not installed; .ci/setup installs protobuf-compiler")
		}
		t.Skip("protoc not installed (apt-get install -y protobuf-compiler); the check of gen/ is skipped")
	}
	out := t.TempDir()
	cmd := exec.Command("bash", "generate.sh", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("generate.sh: %v\n%s", err, b)
	}
	want := files(t, out)
	got := files(t, "gen")
	for name, w := range want {
		g, ok := got[name]
		switch {
		case !ok:
			t.Errorf("gen/%s is missing; run go generate ./internal/pbwire", name)
		case !bytes.Equal(g, w):
			t.Errorf("gen/%s is stale; run go generate ./internal/pbwire", name)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("gen/%s is not generated any more; remove it", name)
		}
	}
}

func files(t *testing.T, root string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		rel, _ := filepath.Rel(root, path)
		m[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}
