package main

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
)

// shellScripts are the repository's shell scripts: every file whose first
// line is a sh or bash shebang (installed npm packages left out).
func shellScripts(t *testing.T) []string {
	t.Helper()
	shebang := regexp.MustCompile(`^#!\s*(/bin/sh|/bin/bash|/usr/bin/env (ba)?sh)\b`)
	var out []string
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); name == ".git" || name == "node_modules" || name == "npm" && filepath.Base(filepath.Dir(path)) == ".ci" {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		head := make([]byte, 64)
		n, _ := f.Read(head)
		if shebang.Match(bytes.SplitN(head[:n], []byte("\n"), 2)[0]) {
			out = append(out, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestShellScripts: every shell script parses (bash -n) and passes
// shellcheck, which .ci/setup installs (Debian package shellcheck).
func TestShellScripts(t *testing.T) {
	scripts := shellScripts(t)
	for _, want := range []string{"docker/setup.sh", ".ci/run", ".ci/test", ".ci/official-suite.sh"} {
		if !slices.Contains(scripts, filepath.Join(repoRoot, want)) {
			t.Errorf("%s is not found as a shell script (found %v)", want, scripts)
		}
	}
	shellcheck, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Fatal("shellcheck is needed to check the shell scripts: bash .ci/setup installs it (apt-get install shellcheck)")
	}
	for _, s := range scripts {
		if out, err := exec.Command("bash", "-n", s).CombinedOutput(); err != nil {
			t.Errorf("bash -n %s: %v\n%s", s, err, out)
		}
		if out, err := exec.Command(shellcheck, s).CombinedOutput(); err != nil {
			t.Errorf("shellcheck %s: %v\n%s", s, err, out)
		}
	}
}
