package main

import (
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ditto-replicator/ditto/internal/testutil"
)

// No Docker engine runs here, so these tests read the Dockerfile, run its
// build commands as they stand (same flags, its ENV, CGO off) and check the
// stages and paths that the compose files and deploy/ rely on.

// repoRoot is the repository, seen from this package's directory.
const repoRoot = "../.."

// instruction is one Dockerfile instruction: ENTRYPOINT ["a", "b"] is
// {"ENTRYPOINT", `["a", "b"]`}.
type instruction struct{ cmd, args string }

// stage is one FROM ... [AS name] and what follows it.
type stage struct {
	name, base string
	body       []instruction
}

// all is the arguments of every instruction cmd of the stage.
func (s *stage) all(cmd string) []string {
	var out []string
	for _, in := range s.body {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return out
}

// dockerfile is the repository's Dockerfile, parsed: line continuations
// joined, comments dropped. A few lines of parsing are enough for the
// instructions used here; BuildKit's parser would bring a large module.
type dockerfile struct{ stages []*stage }

func parseDockerfile(t *testing.T) *dockerfile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	var cont strings.Builder
	for _, line := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		if cont.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if body, ok := strings.CutSuffix(trimmed, `\`); ok {
			cont.WriteString(body + " ")
			continue
		}
		cont.WriteString(trimmed)
		lines = append(lines, cont.String())
		cont.Reset()
	}
	d := &dockerfile{}
	for _, line := range lines {
		cmd, args, _ := strings.Cut(line, " ")
		cmd = strings.ToUpper(cmd)
		args = strings.TrimSpace(args)
		if cmd == "FROM" {
			f := strings.Fields(args)
			s := &stage{base: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			d.stages = append(d.stages, s)
			continue
		}
		if len(d.stages) == 0 {
			t.Fatalf("Dockerfile: %s before the first FROM", cmd)
		}
		last := d.stages[len(d.stages)-1]
		last.body = append(last.body, instruction{cmd, args})
	}
	return d
}

func (d *dockerfile) stage(t *testing.T, name string) *stage {
	t.Helper()
	for _, s := range d.stages {
		if s.name == name {
			return s
		}
	}
	t.Fatalf("Dockerfile has no stage %q", name)
	return nil
}

// chain is the stage and the stages it is built FROM, base first.
func (d *dockerfile) chain(t *testing.T, name string) []*stage {
	t.Helper()
	var out []*stage
	for s := d.stage(t, name); ; {
		out = append([]*stage{s}, out...)
		if !slices.ContainsFunc(d.stages, func(o *stage) bool { return o.name == s.base }) {
			return out
		}
		s = d.stage(t, s.base)
	}
}

// needs is every stage that building stage name runs: its chain and,
// through COPY --from, the stages it copies from.
func (d *dockerfile) needs(t *testing.T, name string) []*stage {
	t.Helper()
	var out []*stage
	for _, s := range d.chain(t, name) {
		out = append(out, s)
		for _, c := range s.all("COPY") {
			if from, ok := strings.CutPrefix(strings.Fields(c)[0], "--from="); ok {
				out = append(out, d.needs(t, from)...)
			}
		}
	}
	return out
}

// execForm parses a JSON exec form such as ["/usr/local/bin/ditto", "health"].
func execForm(t *testing.T, what, args string) []string {
	t.Helper()
	var v []string
	if err := json.Unmarshal([]byte(args), &v); err != nil {
		t.Fatalf("%s %s is not in exec form (the distroless image has no shell): %v", what, args, err)
	}
	return v
}

// copied is the one COPY --from of a runtime stage: source stage, path
// there, path in the image.
func copied(t *testing.T, s *stage) (from, src, dst string) {
	t.Helper()
	copies := s.all("COPY")
	if len(copies) != 1 {
		t.Fatalf("stage %s copies %d things, want exactly one binary: %v", s.name, len(copies), copies)
	}
	f := strings.Fields(copies[0])
	if len(f) != 3 || !strings.HasPrefix(f[0], "--from=") {
		t.Fatalf("stage %s: COPY %s is not COPY --from=STAGE SRC DST", s.name, copies[0])
	}
	return strings.TrimPrefix(f[0], "--from="), f[1], f[2]
}

// buildCommand finds the RUN of the chain of stage from that writes out
// (go build ... -o out) and the environment the chain gives it: its ENV and
// its ARG defaults.
func (d *dockerfile) buildCommand(t *testing.T, from, out string) (run string, env map[string]string) {
	t.Helper()
	env = map[string]string{}
	workdir, copiedAll := "", false
	for _, s := range d.chain(t, from) {
		for _, in := range s.body {
			switch in.cmd {
			case "ENV", "ARG":
				for _, kv := range strings.Fields(in.args) {
					k, v, _ := strings.Cut(kv, "=")
					env[k] = v
				}
			case "WORKDIR":
				workdir = in.args
			case "COPY":
				copiedAll = copiedAll || in.args == ". ."
			case "RUN":
				if strings.Contains(in.args, "go build") && strings.Contains(in.args, " -o "+out+" ") {
					if !copiedAll || workdir == "" {
						t.Fatalf("%s is built before the repository is copied to the WORKDIR", out)
					}
					return in.args, env
				}
			}
		}
	}
	t.Fatalf("no RUN go build ... -o %s in stage %s or the stages it builds on", out, from)
	return "", nil
}

// buildAsDockerfile runs the build command of the runtime stage name in the
// repository with the Dockerfile's environment and args, writing the binary
// into a temporary directory instead of the image's output path.
func buildAsDockerfile(t *testing.T, d *dockerfile, name string, args map[string]string) string {
	t.Helper()
	from, src, _ := copied(t, d.stage(t, name))
	run, env := d.buildCommand(t, from, src)
	if env["CGO_ENABLED"] != "0" {
		t.Fatalf("the build of %s runs with CGO_ENABLED=%q: the static distroless image needs 0", src, env["CGO_ENABLED"])
	}
	dir := t.TempDir()
	out := filepath.Join(dir, filepath.Base(src))
	run = strings.Replace(run, " -o "+src+" ", " -o "+out+" ", 1)
	cmd := exec.Command("sh", "-c", run)
	cmd.Dir = repoRoot
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	for k, v := range args {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", run, err, b)
	}
	return out
}

// static fails unless bin is a statically linked executable: no ELF
// interpreter, no shared libraries, as the distroless static base needs.
func static(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatalf("%s has an ELF interpreter: it is dynamically linked", bin)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Fatalf("%s needs shared libraries %v", bin, libs)
	}
}

// metricsPort is the port of DITTO_METRICS_ADDRESS's default.
func metricsPort(t *testing.T) string {
	t.Helper()
	url, err := healthURL(func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(url[strings.LastIndex(url, ":")+1:], "/health/ready")
}

// TestDockerfileRuntimeImage: the default target is ditto alone, static, on
// distroless, as a numeric non-root user, with the metrics port exposed and
// a health check that needs no shell.
func TestDockerfileRuntimeImage(t *testing.T) {
	d := parseDockerfile(t)
	last := d.stages[len(d.stages)-1]
	if last.name != "ditto" {
		t.Fatalf("the last stage (docker build's default target) is %q, want ditto", last.name)
	}
	if !strings.HasPrefix(last.base, "gcr.io/distroless/static") {
		t.Fatalf("the runtime image is FROM %s, want a distroless static base", last.base)
	}
	from, _, dst := copied(t, last)
	if dst != "/usr/local/bin/ditto" {
		t.Fatalf("the runtime image holds %s, want /usr/local/bin/ditto", dst)
	}
	if got := execForm(t, "ENTRYPOINT", last.all("ENTRYPOINT")[0]); !slices.Equal(got, []string{dst}) {
		t.Fatalf("ENTRYPOINT %v, want [%s]", got, dst)
	}
	users := last.all("USER")
	if len(users) != 1 {
		t.Fatalf("USER %v: want one", users)
	}
	uid, err := strconv.Atoi(strings.Split(users[0], ":")[0])
	if err != nil || uid == 0 {
		t.Fatalf("USER %s: want a numeric non-root uid, so that Kubernetes can check runAsNonRoot", users[0])
	}
	if exposed := strings.Fields(strings.Join(last.all("EXPOSE"), " ")); !slices.Contains(exposed, metricsPort(t)) {
		t.Fatalf("EXPOSE %v lacks the metrics port %s", exposed, metricsPort(t))
	}
	hc := last.all("HEALTHCHECK")
	if len(hc) != 1 {
		t.Fatalf("HEALTHCHECK %v: want one", hc)
	}
	_, probe, ok := strings.Cut(hc[0], "CMD ")
	if !ok {
		t.Fatalf("HEALTHCHECK %s has no CMD", hc[0])
	}
	if got := execForm(t, "HEALTHCHECK CMD", probe); !slices.Equal(got, []string{dst, "health"}) {
		t.Fatalf("HEALTHCHECK CMD %v, want [%s health]", got, dst)
	}
	if from == "build-emulator" || slices.ContainsFunc(d.chain(t, from), func(s *stage) bool {
		return slices.ContainsFunc(s.all("RUN"), func(r string) bool { return strings.Contains(r, "esdb-emulator") })
	}) {
		t.Fatal("the runtime image's build stage builds the test server too")
	}
}

// TestDockerfileBuildsStampedStaticBinaries builds ditto and esdb-emulator
// with the Dockerfile's own commands and runs them.
func TestDockerfileBuildsStampedStaticBinaries(t *testing.T) {
	d := parseDockerfile(t)
	const version = "v0.0.0-dockerfile-test"
	bin := buildAsDockerfile(t, d, "ditto", map[string]string{"VERSION": version})
	static(t, bin)
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "ditto "+version+" go") {
		t.Fatalf("ditto version: %v, %q; want the stamped %s", err, out, version)
	}
	// What the HEALTHCHECK runs, with nothing listening: unhealthy, not a
	// crash or Docker's reserved exit code 2.
	hc := exec.Command(bin, "health")
	hc.Env = []string{"DITTO_METRICS_ADDRESS=" + testutil.FreeAddr(t)}
	if out, _ := hc.CombinedOutput(); hc.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "no answer") {
		t.Fatalf("ditto health with nothing listening: exit %d, %q", hc.ProcessState.ExitCode(), out)
	}

	emu := d.stage(t, "emulator")
	_, _, dst := copied(t, emu)
	if dst != "/usr/local/bin/esdb-emulator" || !slices.Equal(execForm(t, "ENTRYPOINT", emu.all("ENTRYPOINT")[0]), []string{dst}) {
		t.Fatalf("the emulator stage copies %s and runs %v", dst, emu.all("ENTRYPOINT"))
	}
	emuBin := buildAsDockerfile(t, d, "emulator", nil)
	static(t, emuBin)
	// Its CMD must be flags the emulator accepts: --help lists them.
	help, _ := exec.Command(emuBin, "--help").CombinedOutput()
	for _, arg := range execForm(t, "CMD", emu.all("CMD")[0]) {
		if name, ok := strings.CutPrefix(arg, "--"); ok && !strings.Contains(string(help), "-"+name+" ") && !strings.Contains(string(help), "-"+name+"\n") {
			t.Fatalf("the emulator stage's CMD passes %s, which esdb-emulator does not know:\n%s", arg, help)
		}
	}
}
