package main

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/ditto-replicator/ditto/config"
)

// The Kubernetes manifests in deploy/. No cluster runs here, so the test
// decodes every manifest strictly into the subset of the Kubernetes API
// types that the manifests use (a misspelt or unplaced field fails), and
// checks what a ditto Deployment needs. The k8s.io/api module would pull an
// unreleased protobuf runtime into ditto's build, so the types are declared
// here.

const deployDir = "deploy"

type objectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type labelSelector struct {
	MatchLabels map[string]string `json:"matchLabels"`
}

// matches reports whether the selector selects labels.
func (s labelSelector) matches(labels map[string]string) bool {
	if len(s.MatchLabels) == 0 {
		return false
	}
	for k, v := range s.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

type deployment struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		Replicas *int32        `json:"replicas"`
		Selector labelSelector `json:"selector"`
		Strategy struct {
			Type          string `json:"type"`
			RollingUpdate *struct {
				MaxSurge       any `json:"maxSurge"`
				MaxUnavailable any `json:"maxUnavailable"`
			} `json:"rollingUpdate"`
		} `json:"strategy"`
		Template struct {
			Metadata objectMeta `json:"metadata"`
			Spec     podSpec    `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int64 `json:"terminationGracePeriodSeconds"`
	AutomountServiceAccountToken  *bool  `json:"automountServiceAccountToken"`
	SecurityContext               *struct {
		RunAsNonRoot   *bool  `json:"runAsNonRoot"`
		RunAsUser      *int64 `json:"runAsUser"`
		RunAsGroup     *int64 `json:"runAsGroup"`
		SeccompProfile *struct {
			Type string `json:"type"`
		} `json:"seccompProfile"`
	} `json:"securityContext"`
	TopologySpreadConstraints []struct {
		MaxSkew           int32         `json:"maxSkew"`
		TopologyKey       string        `json:"topologyKey"`
		WhenUnsatisfiable string        `json:"whenUnsatisfiable"`
		LabelSelector     labelSelector `json:"labelSelector"`
	} `json:"topologySpreadConstraints"`
	Containers []container `json:"containers"`
}

type container struct {
	Name  string `json:"name"`
	Image string `json:"image"`
	Ports []struct {
		Name          string `json:"name"`
		ContainerPort int32  `json:"containerPort"`
	} `json:"ports"`
	Env []struct {
		Name      string `json:"name"`
		Value     string `json:"value,omitempty"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `json:"name"`
				Key  string `json:"key"`
			} `json:"secretKeyRef"`
		} `json:"valueFrom,omitempty"`
	} `json:"env"`
	LivenessProbe  *probe `json:"livenessProbe"`
	ReadinessProbe *probe `json:"readinessProbe"`
	Resources      struct {
		Requests map[string]string `json:"requests"`
		Limits   map[string]string `json:"limits"`
	} `json:"resources"`
	SecurityContext *struct {
		AllowPrivilegeEscalation *bool `json:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool `json:"readOnlyRootFilesystem"`
		Capabilities             *struct {
			Drop []string `json:"drop"`
		} `json:"capabilities"`
	} `json:"securityContext"`
}

type probe struct {
	HTTPGet *struct {
		Path string `json:"path"`
		Port any    `json:"port"`
	} `json:"httpGet"`
	PeriodSeconds    int32 `json:"periodSeconds"`
	FailureThreshold int32 `json:"failureThreshold"`
}

type podDisruptionBudget struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		MinAvailable               any           `json:"minAvailable"`
		MaxUnavailable             any           `json:"maxUnavailable"`
		UnhealthyPodEvictionPolicy string        `json:"unhealthyPodEvictionPolicy"`
		Selector                   labelSelector `json:"selector"`
	} `json:"spec"`
}

type secret struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   objectMeta        `json:"metadata"`
	Type       string            `json:"type"`
	StringData map[string]string `json:"stringData"`
	Data       map[string][]byte `json:"data"`
}

type kustomization struct {
	APIVersion string           `json:"apiVersion"`
	Kind       string           `json:"kind"`
	Resources  []string         `json:"resources"`
	Images     []kustomizeImage `json:"images"`
}

type kustomizeImage struct {
	Name    string `json:"name"`
	NewName string `json:"newName,omitempty"`
	NewTag  string `json:"newTag,omitempty"`
}

// manifests is everything deploy/ defines, decoded.
type manifests struct {
	deployments []deployment
	pdbs        []podDisruptionBudget
	secrets     map[string]secret
	kustomize   kustomization
}

var apiVersions = map[string]string{"Deployment": "apps/v1", "PodDisruptionBudget": "policy/v1", "Secret": "v1"}

func readManifests(t *testing.T) *manifests {
	t.Helper()
	m := &manifests{secrets: map[string]secret{}}
	readYAML(t, filepath.Join(deployDir, "kustomization.yaml"), &m.kustomize)
	files, err := filepath.Glob(filepath.Join(repoRoot, deployDir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, f := range files {
		name := filepath.Base(f)
		if name == "kustomization.yaml" {
			continue
		}
		if !strings.HasSuffix(name, ".yaml") {
			t.Errorf("%s/%s: only .yaml manifests belong in %s", deployDir, name, deployDir)
			continue
		}
		listed = append(listed, name)
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(raw), -1) {
			if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(doc, "")) == "" {
				continue
			}
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if want, ok := apiVersions[head.Kind]; !ok || head.APIVersion != want {
				t.Fatalf("%s: %s %s: this test knows %v", name, head.APIVersion, head.Kind, apiVersions)
			}
			strict := func(v any) {
				if err := yaml.UnmarshalStrict([]byte(doc), v); err != nil {
					t.Fatalf("%s: %s: %v", name, head.Kind, err)
				}
			}
			switch head.Kind {
			case "Deployment":
				var d deployment
				strict(&d)
				m.deployments = append(m.deployments, d)
			case "PodDisruptionBudget":
				var p podDisruptionBudget
				strict(&p)
				m.pdbs = append(m.pdbs, p)
			case "Secret":
				var s secret
				strict(&s)
				m.secrets[s.Metadata.Name] = s
			}
		}
	}
	resources := slices.Clone(m.kustomize.Resources)
	slices.Sort(resources)
	if m.kustomize.Kind != "Kustomization" || !slices.Equal(resources, listed) {
		t.Errorf("kustomization.yaml (%s) lists %v; %s holds %v", m.kustomize.Kind, m.kustomize.Resources, deployDir, listed)
	}
	return m
}

// quantity parses the Kubernetes quantities the manifests use: CPU in
// cores or millicores, memory in bytes or Ki/Mi/Gi.
func quantity(t *testing.T, s string) float64 {
	t.Helper()
	mult := 1.0
	for suffix, m := range map[string]float64{"m": 1e-3, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30} {
		if strings.HasSuffix(s, suffix) {
			s, mult = strings.TrimSuffix(s, suffix), m
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("quantity %q: %v", s, err)
	}
	return v * mult
}

// TestKubernetesManifests: two replicas of ditto on one group, probes on
// the health endpoints, connection strings from a Secret, graceful
// termination longer than DITTO_SHUTDOWN_TIMEOUT, resources, a non-root
// read-only container, Prometheus scrape annotations and a
// PodDisruptionBudget.
func TestKubernetesManifests(t *testing.T) {
	m := readManifests(t)
	if len(m.deployments) != 1 {
		t.Fatalf("%d Deployments in %s, want one", len(m.deployments), deployDir)
	}
	d := m.deployments[0]
	spec := d.Spec.Template.Spec
	labels := d.Spec.Template.Metadata.Labels
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas %v, want 2 competing consumers", d.Spec.Replicas)
	}
	if !d.Spec.Selector.matches(labels) {
		t.Errorf("the selector %v does not select the pod labels %v", d.Spec.Selector.MatchLabels, labels)
	}
	if len(spec.Containers) != 1 || spec.Containers[0].Name != "ditto" {
		t.Fatalf("containers %+v, want one named ditto", spec.Containers)
	}
	c := spec.Containers[0]
	if !slices.ContainsFunc(m.kustomize.Images, func(i kustomizeImage) bool { return i.Name == strings.Split(c.Image, ":")[0] }) {
		t.Errorf("kustomization.yaml's images do not name the container's image %s", c.Image)
	}

	// The environment: connection strings from the Secret, the rest as
	// values; together they must make a configuration that loads.
	env := map[string]string{}
	secretVar := map[string]bool{}
	for _, v := range config.Variables() {
		secretVar[v.Name] = v.Secret
	}
	usedKeys := map[string]map[string]bool{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			s, ok := m.secrets[ref.Name]
			if !ok {
				t.Errorf("%s comes from the Secret %s, which %s does not define", e.Name, ref.Name, deployDir)
				continue
			}
			val, ok := s.StringData[ref.Key]
			if !ok {
				val, ok = string(s.Data[ref.Key]), s.Data[ref.Key] != nil
			}
			if !ok {
				t.Errorf("%s comes from key %s of the Secret %s, which has no such key", e.Name, ref.Key, ref.Name)
			}
			env[e.Name] = val
			if usedKeys[ref.Name] == nil {
				usedKeys[ref.Name] = map[string]bool{}
			}
			usedKeys[ref.Name][ref.Key] = true
		case e.ValueFrom != nil:
			t.Errorf("%s: only secretKeyRef is expected", e.Name)
		default:
			if secretVar[e.Name] {
				t.Errorf("%s holds credentials: take it from the Secret, not a literal value", e.Name)
			}
			env[e.Name] = e.Value
		}
	}
	checkDittoEnv(t, "the ditto container of "+deployDir, env)
	for name, s := range m.secrets {
		if s.Type != "Opaque" {
			t.Errorf("Secret %s is of type %q, want Opaque", name, s.Type)
		}
		for key := range s.StringData {
			if !usedKeys[name][key] {
				t.Errorf("Secret %s: key %s is used by nothing", name, key)
			}
		}
	}

	// Probes on the health endpoints of the metrics port.
	addr, ok := env["DITTO_METRICS_ADDRESS"]
	if !ok {
		addr = ":" + metricsPort(t)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	portNames := map[string]string{}
	for _, p := range c.Ports {
		portNames[p.Name] = strconv.Itoa(int(p.ContainerPort))
	}
	if portNames["metrics"] != port {
		t.Errorf("container ports %+v: want one named metrics on %s (DITTO_METRICS_ADDRESS=%s)", c.Ports, port, addr)
	}
	for _, pr := range []struct {
		name string
		p    *probe
		path string
	}{{"livenessProbe", c.LivenessProbe, "/health/live"}, {"readinessProbe", c.ReadinessProbe, "/health/ready"}} {
		if pr.p == nil || pr.p.HTTPGet == nil {
			t.Errorf("%s: want an httpGet on %s", pr.name, pr.path)
			continue
		}
		// A port is a number or the name of a container port.
		got := jsonString(pr.p.HTTPGet.Port)
		if name, err := strconv.Unquote(got); err == nil {
			got = portNames[name]
		}
		if pr.p.HTTPGet.Path != pr.path || got != port {
			t.Errorf("%s asks %s on port %v, want %s on %s", pr.name, pr.p.HTTPGet.Path, pr.p.HTTPGet.Port, pr.path, port)
		}
	}

	// Graceful termination: the kubelet waits longer than ditto drains.
	shutdown := dittoDuration(t, env, "DITTO_SHUTDOWN_TIMEOUT")
	if spec.TerminationGracePeriodSeconds == nil || time.Duration(*spec.TerminationGracePeriodSeconds)*time.Second <= shutdown {
		t.Errorf("terminationGracePeriodSeconds %s must exceed DITTO_SHUTDOWN_TIMEOUT (%s)", jsonString(spec.TerminationGracePeriodSeconds), shutdown)
	}

	// Resources: requests and limits of both, requests within limits.
	for _, r := range []string{"cpu", "memory"} {
		req, lim := c.Resources.Requests[r], c.Resources.Limits[r]
		if req == "" || lim == "" {
			t.Errorf("resources: %s request %q, limit %q: want both", r, req, lim)
			continue
		}
		if quantity(t, req) > quantity(t, lim) {
			t.Errorf("resources: the %s request %s exceeds its limit %s", r, req, lim)
		}
	}

	// Non-root, as the image's numeric USER; nothing to write, nothing to
	// escalate to.
	sc := spec.SecurityContext
	uid := imageUID(t)
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != uid {
		t.Errorf("pod securityContext %s: want runAsNonRoot and runAsUser %d (the image's USER)", jsonString(sc), uid)
	}
	csc := c.SecurityContext
	if csc == nil || csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem ||
		csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation ||
		csc.Capabilities == nil || !slices.Equal(csc.Capabilities.Drop, []string{"ALL"}) {
		t.Errorf("container securityContext %s: want a read-only root file system, no privilege escalation, all capabilities dropped", jsonString(csc))
	}

	// Prometheus finds the pods by their annotations.
	ann := d.Spec.Template.Metadata.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != port || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("pod annotations %v: want prometheus.io/scrape true, port %s, path /metrics", ann, port)
	}

	// The budget keeps one ditto and lets the other go.
	if len(m.pdbs) != 1 {
		t.Fatalf("%d PodDisruptionBudgets, want one", len(m.pdbs))
	}
	pdb := m.pdbs[0].Spec
	if !pdb.Selector.matches(labels) {
		t.Errorf("the PodDisruptionBudget selects %v, not the ditto pods %v", pdb.Selector.MatchLabels, labels)
	}
	if jsonString(pdb.MinAvailable) != "1" && jsonString(pdb.MaxUnavailable) != "1" {
		t.Errorf("PodDisruptionBudget minAvailable %v, maxUnavailable %v: with 2 replicas, want one of them 1", pdb.MinAvailable, pdb.MaxUnavailable)
	}
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// imageUID is the uid of the runtime image's USER.
func imageUID(t *testing.T) int64 {
	t.Helper()
	d := parseDockerfile(t)
	users := d.stages[len(d.stages)-1].all("USER")
	if len(users) != 1 {
		t.Fatalf("USER %v", users)
	}
	uid, err := strconv.ParseInt(strings.Split(users[0], ":")[0], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return uid
}
