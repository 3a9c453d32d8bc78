package main

// The deployment files in deploy/ checked as a specification: the Kubernetes
// base is decoded strictly into the upstream API types (a misspelled field
// fails) and checked for consistency (selectors, ports, probes, Secrets,
// volumes, security context, labels, shutdown timing, network policy); the
// compose file is decoded strictly and checked the same way; every command
// line, in both, is parsed by the real shoal command tree, so a flag that
// does not exist fails here rather than in a crash-looping pod.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/shoal-dev/shoal"
)

const (
	deployDir   = "../../deploy"
	k8sDir      = deployDir + "/k8s"
	composeFile = deployDir + "/compose.yaml"
)

// externalSecrets are the Secrets the base refers to but never contains
// (docs/deploy.md creates them), with the files each holds.
var externalSecrets = map[string][]string{
	"shoal-nats-credentials":    {"admin.nk", "gateway.nk", "runner.nk", "auth.nk", "client.nk"},
	"shoal-gateway-credentials": {"gateway.nk"},
	"shoal-runner-credentials":  {"auth.nk"},
	"shoal-admin-credentials":   {"admin.nk"},
	"shoal-signing-key":         {"signing.jwks"},
}

// Ports and health endpoints of the contract. listenFlags are the flags
// that make a subcommand listen, with their defaults; healthPaths what the
// listener a flag opens serves; probePaths which path each kind of probe
// must use: liveness only asks whether the process is alive (a NATS outage
// must not restart every gateway), readiness whether it can serve.
var (
	listenFlags = map[string]map[string]string{
		"nats":    {"listen": "127.0.0.1:4222", "cluster-listen": "", "monitor": ""},
		"gateway": {"http": "127.0.0.1:8080"},
		"runner":  {"health": ""},
	}
	healthPaths = map[string]map[string][]string{
		"nats":    {"monitor": {"/healthz", "/healthz?js-enabled-only=true"}},
		"gateway": {"http": {"/healthz", "/readyz"}},
		"runner":  {"health": {"/healthz", "/readyz"}},
	}
	probePaths = map[string]map[string]string{
		"nats":    {"liveness": "/healthz?js-enabled-only=true", "readiness": "/healthz"},
		"gateway": {"liveness": "/healthz", "readiness": "/readyz"},
		"runner":  {"liveness": "/healthz", "readiness": "/readyz"},
	}
	// defaultDrain is every subcommand's --drain-timeout default.
	defaultDrain = 30 * time.Second
)

// labelKeys must be on every object and pod of the base.
var labelKeys = []string{
	"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
	"app.kubernetes.io/part-of", "app.kubernetes.io/version",
}

// ---------------------------------------------------------------------------
// Kubernetes: reading the base

// kustomization is the part of kustomization.yaml this base uses; anything
// else in the file fails the strict decoding.
type kustomization struct {
	APIVersion         string               `json:"apiVersion"`
	Kind               string               `json:"kind"`
	Namespace          string               `json:"namespace"`
	Resources          []string             `json:"resources"`
	ConfigMapGenerator []configMapGenerator `json:"configMapGenerator"`
	Images             []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

type configMapGenerator struct {
	Name    string   `json:"name"`
	Files   []string `json:"files"`
	Options struct {
		Labels map[string]string `json:"labels"`
	} `json:"options"`
}

// k8sObject is one document of a resource file, decoded into its type.
type k8sObject struct {
	where string // file#index, for messages
	kind  string
	meta  metav1.Object
	obj   any
}

// workload is a Deployment, a StatefulSet or a Job (whose selector
// Kubernetes makes itself: selector is nil).
type workload struct {
	kind, name string
	replicas   int32
	selector   *metav1.LabelSelector
	pod        *corev1.PodTemplateSpec
	claims     []corev1.PersistentVolumeClaim
}

func (w *workload) String() string { return w.kind + "/" + w.name }

// allContainers are the pod's init containers and containers.
func (w *workload) allContainers() []corev1.Container {
	return append(slices.Clone(w.pod.Spec.InitContainers), w.pod.Spec.Containers...)
}

type k8sBase struct {
	kust      kustomization
	objects   []k8sObject
	workloads []*workload
	services  []*corev1.Service
	policies  []*networkingv1.NetworkPolicy
	configMap map[string][]string // generated ConfigMaps and their keys
}

// newTyped returns the upstream type for apiVersion and kind; the base may
// use no other kinds.
func newTyped(apiVersion, kind string) (any, bool) {
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		return &corev1.Namespace{}, true
	case "v1 Service":
		return &corev1.Service{}, true
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, true
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, true
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}, true
	case "batch/v1 Job":
		return &batchv1.Job{}, true
	case "autoscaling/v2 HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}, true
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "networking.k8s.io/v1 NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, true
	}
	return nil, false
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// readK8sBase reads the kustomization and every document of its resources,
// strictly; every problem is reported.
func readK8sBase(t *testing.T) *k8sBase {
	t.Helper()
	b := &k8sBase{configMap: map[string][]string{}}
	raw, err := os.ReadFile(filepath.Join(k8sDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(raw, &b.kust); err != nil {
		t.Fatalf("deploy/k8s/kustomization.yaml: %v", err)
	}
	for _, g := range b.kust.ConfigMapGenerator {
		var keys []string
		for _, f := range g.Files {
			keys = append(keys, path.Base(f))
		}
		b.configMap[g.Name] = keys
	}
	for _, res := range b.kust.Resources {
		raw, err := os.ReadFile(filepath.Join(k8sDir, res))
		if err != nil {
			t.Errorf("kustomization.yaml lists %s: %v", res, err)
			continue
		}
		for i, doc := range docSeparator.Split(string(raw), -1) {
			where := fmt.Sprintf("%s#%d", res, i)
			j, err := yaml.YAMLToJSONStrict([]byte(doc))
			if err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			if string(j) == "null" { // only comments
				continue
			}
			var tm metav1.TypeMeta
			if err := json.Unmarshal(j, &tm); err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			obj, ok := newTyped(tm.APIVersion, tm.Kind)
			if !ok {
				t.Errorf("%s: apiVersion %q kind %q: not a kind this base uses (add it to newTyped, decoded strictly)", where, tm.APIVersion, tm.Kind)
				continue
			}
			dec := json.NewDecoder(bytes.NewReader(j))
			dec.DisallowUnknownFields()
			if err := dec.Decode(obj); err != nil {
				t.Errorf("%s (%s): %v", where, tm.Kind, err)
				continue
			}
			o := k8sObject{where: where, kind: tm.Kind, meta: obj.(metav1.Object), obj: obj}
			b.objects = append(b.objects, o)
			switch v := obj.(type) {
			case *appsv1.Deployment:
				b.workloads = append(b.workloads, &workload{kind: "Deployment", name: v.Name,
					replicas: ptrOr(v.Spec.Replicas, 1), selector: v.Spec.Selector, pod: &v.Spec.Template})
			case *appsv1.StatefulSet:
				b.workloads = append(b.workloads, &workload{kind: "StatefulSet", name: v.Name,
					replicas: ptrOr(v.Spec.Replicas, 1), selector: v.Spec.Selector, pod: &v.Spec.Template,
					claims: v.Spec.VolumeClaimTemplates})
			case *batchv1.Job:
				b.workloads = append(b.workloads, &workload{kind: "Job", name: v.Name,
					replicas: ptrOr(v.Spec.Parallelism, 1), pod: &v.Spec.Template})
			case *corev1.Service:
				b.services = append(b.services, v)
			case *networkingv1.NetworkPolicy:
				b.policies = append(b.policies, v)
			case *corev1.ConfigMap:
				b.configMap[v.Name] = slices.Sorted(maps.Keys(v.Data))
			}
		}
	}
	return b
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func (b *k8sBase) workload(kind, name string) *workload {
	for _, w := range b.workloads {
		if w.kind == kind && w.name == name {
			return w
		}
	}
	return nil
}

// selecting returns the workloads whose pods sel selects.
func (b *k8sBase) selecting(sel labels.Selector) []*workload {
	var ws []*workload
	for _, w := range b.workloads {
		if sel.Matches(labels.Set(w.pod.Labels)) {
			ws = append(ws, w)
		}
	}
	return ws
}

// subcommand names the shoal subcommand of a command line: its leading
// words before the first flag ("key publish").
func subcommand(args []string) string {
	var words []string
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			break
		}
		words = append(words, a)
	}
	return strings.Join(words, " ")
}

// flagValue is the value a command line gives flag name, on the command line
// or as SHOAL_<FLAG> in env; ok is false when neither sets it. It reads the
// command line alone, without the command tree.
func flagValue(args []string, env map[string]string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	v, ok := env[envName(name)]
	return v, ok
}

// drainTimeout is the --drain-timeout a command line gives.
func drainTimeout(t *testing.T, args []string, env map[string]string) time.Duration {
	t.Helper()
	v, ok := flagValue(args, env, "drain-timeout")
	if !ok {
		return defaultDrain
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Errorf("%v: --drain-timeout %q: %v", args, v, err)
	}
	return d
}

// listeners maps each port a command line listens on to the flag that opens
// it; a listener must accept connections from outside its container.
func listeners(t *testing.T, where string, args []string, env map[string]string) map[int32]string {
	t.Helper()
	out := map[int32]string{}
	for flag, def := range listenFlags[subcommand(args)] {
		v, ok := flagValue(args, env, flag)
		if !ok {
			v = def
		}
		if v == "" {
			continue
		}
		host, port, err := net.SplitHostPort(v)
		if err != nil {
			t.Errorf("%s: --%s %q: %v", where, flag, v, err)
			continue
		}
		if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
			t.Errorf("%s: --%s %s listens on %s only: other pods and containers cannot reach it; use 0.0.0.0", where, flag, v, host)
		}
		n, err := strconv.ParseInt(port, 10, 32)
		if err != nil {
			t.Errorf("%s: --%s %q: bad port", where, flag, v)
			continue
		}
		out[int32(n)] = flag
	}
	return out
}

// containerEnv is a container's environment; values from elsewhere
// (valueFrom) are empty.
func containerEnv(c corev1.Container) map[string]string {
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	return env
}

// ---------------------------------------------------------------------------
// Kubernetes: the checks

func TestDeployK8sKustomizationListsEveryFile(t *testing.T) {
	b := readK8sBase(t)
	if b.kust.APIVersion != "kustomize.config.k8s.io/v1beta1" || b.kust.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml: apiVersion %q kind %q", b.kust.APIVersion, b.kust.Kind)
	}
	listed := map[string]bool{}
	for _, r := range b.kust.Resources {
		listed[r] = true
	}
	for _, g := range b.kust.ConfigMapGenerator {
		for _, f := range g.Files {
			listed[f] = true
		}
	}
	entries, err := os.ReadDir(k8sDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || name == "kustomization.yaml" || (!strings.HasSuffix(name, ".yaml") && !strings.HasSuffix(name, ".yml")) {
			continue
		}
		if !listed[name] {
			t.Errorf("deploy/k8s/%s is in no resources or configMapGenerator entry of kustomization.yaml", name)
		}
	}
	if len(b.kust.Images) != 1 || b.kust.Images[0].Name != "shoal" {
		t.Errorf("kustomization.yaml images: want one entry for the image name shoal, got %+v", b.kust.Images)
	}
}

func TestDeployK8sObjects(t *testing.T) {
	b := readK8sBase(t)
	ns := b.kust.Namespace
	if ns == "" {
		t.Fatal("kustomization.yaml: no namespace")
	}
	kinds := map[string]int{}
	for _, o := range b.objects {
		kinds[o.kind]++
		if o.kind == "Secret" {
			t.Errorf("%s: a Secret in the base; Secrets are created outside it (docs/deploy.md)", o.where)
		}
		if o.kind == "Namespace" {
			if o.meta.GetName() != ns {
				t.Errorf("%s: Namespace %q, kustomization namespace %q", o.where, o.meta.GetName(), ns)
			}
		} else if got := o.meta.GetNamespace(); got != "" && got != ns {
			t.Errorf("%s: namespace %q, want %q (or none: kustomize sets it)", o.where, got, ns)
		}
		checkLabels(t, o.where, o.meta.GetLabels())
	}
	for _, want := range []string{"Namespace", "Service", "StatefulSet", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} {
		if kinds[want] == 0 {
			t.Errorf("the base has no %s", want)
		}
	}
	for _, g := range b.kust.ConfigMapGenerator {
		checkLabels(t, "configMapGenerator "+g.Name, g.Options.Labels)
	}
}

func checkLabels(t *testing.T, where string, l map[string]string) {
	t.Helper()
	for _, k := range labelKeys {
		if l[k] == "" {
			t.Errorf("%s: no label %s", where, k)
		}
	}
	if v, ok := l["app.kubernetes.io/part-of"]; ok && v != "shoal" {
		t.Errorf("%s: app.kubernetes.io/part-of %q, want shoal", where, v)
	}
	if v, ok := l["app.kubernetes.io/version"]; ok && v != shoal.Version {
		t.Errorf("%s: app.kubernetes.io/version %q, want %q (shoal.Version)", where, v, shoal.Version)
	}
}

func TestDeployK8sWorkloads(t *testing.T) {
	b := readK8sBase(t)
	if len(b.workloads) == 0 {
		t.Fatal("no workloads")
	}
	for _, w := range b.workloads {
		t.Run(w.String(), func(t *testing.T) {
			checkWorkload(t, b, w)
		})
	}
}

func checkWorkload(t *testing.T, b *k8sBase, w *workload) {
	spec := &w.pod.Spec
	if w.kind == "Job" {
		// Kubernetes selects a Job's pods itself; what must hold is that
		// no Service or budget of another workload selects them.
		if spec.RestartPolicy != corev1.RestartPolicyOnFailure && spec.RestartPolicy != corev1.RestartPolicyNever {
			t.Errorf("%s: restartPolicy %q; a Job needs OnFailure or Never", w, spec.RestartPolicy)
		}
	} else {
		if w.selector == nil || (len(w.selector.MatchLabels) == 0 && len(w.selector.MatchExpressions) == 0) {
			t.Fatalf("%s: no selector", w)
		}
		sel, err := metav1.LabelSelectorAsSelector(w.selector)
		if err != nil {
			t.Fatalf("%s: selector: %v", w, err)
		}
		if !sel.Matches(labels.Set(w.pod.Labels)) {
			t.Errorf("%s: selector %s does not match its pod labels %v", w, sel, w.pod.Labels)
		}
		if others := b.selecting(sel); len(others) != 1 {
			t.Errorf("%s: selector %s selects the pods of %v; it must select its own only", w, sel, others)
		}
	}
	checkLabels(t, w.String()+" pod template", w.pod.Labels)
	for _, c := range w.claims {
		checkLabels(t, w.String()+" volumeClaimTemplate "+c.Name, c.Labels)
	}

	// Pod-level settings.
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: automountServiceAccountToken must be false: Shoal never talks to the Kubernetes API", w)
	}
	// Service links put variables such as SHOAL_GATEWAY_PORT into every
	// container, which the shoal command would take for SHOAL_<FLAG> settings.
	if spec.EnableServiceLinks == nil || *spec.EnableServiceLinks {
		t.Errorf("%s: enableServiceLinks must be false (service links would add SHOAL_* variables)", w)
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Errorf("%s: host namespaces are not allowed", w)
	}

	// Volumes: declared once, each used, each source known.
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		if _, dup := volumes[v.Name]; dup {
			t.Errorf("%s: volume %q twice", w, v.Name)
		}
		volumes[v.Name] = v
		switch {
		case v.Secret != nil:
			if _, ok := externalSecrets[v.Secret.SecretName]; !ok {
				t.Errorf("%s: volume %q: Secret %q is not one of the documented Secrets %v", w, v.Name, v.Secret.SecretName, slices.Sorted(maps.Keys(externalSecrets)))
			}
		case v.ConfigMap != nil:
			if _, ok := b.configMap[v.ConfigMap.Name]; !ok {
				t.Errorf("%s: volume %q: ConfigMap %q is neither generated nor declared in the base", w, v.Name, v.ConfigMap.Name)
			}
		case v.EmptyDir != nil:
		default:
			t.Errorf("%s: volume %q: only Secret, ConfigMap and emptyDir volumes are expected", w, v.Name)
		}
	}
	claims := map[string]bool{}
	for _, c := range w.claims {
		claims[c.Name] = true
	}
	used := map[string]bool{}

	maxGrace := time.Duration(0)
	for _, c := range w.allContainers() {
		where := w.String() + " container " + c.Name
		env := containerEnv(c)

		// Image: the one shoal image, set by kustomization images.
		if c.Image != "shoal" {
			t.Errorf("%s: image %q, want shoal (kustomization.yaml images sets name and tag)", where, c.Image)
		}
		if len(c.Command) > 0 {
			t.Errorf("%s: command %v overrides the image's entrypoint (shoal); use args", where, c.Command)
		}
		if len(c.Args) == 0 {
			t.Errorf("%s: no args: a shoal subcommand is needed", where)
		}
		for _, e := range c.EnvFrom {
			t.Errorf("%s: envFrom %+v: list variables one by one, so that each is checked", where, e)
		}
		for _, e := range c.Env {
			if e.ValueFrom == nil {
				continue
			}
			if r := e.ValueFrom.SecretKeyRef; r != nil {
				if !slices.Contains(externalSecrets[r.Name], r.Key) {
					t.Errorf("%s: env %s: Secret %q key %q is not documented", where, e.Name, r.Name, r.Key)
				}
			}
			if r := e.ValueFrom.ConfigMapKeyRef; r != nil && !slices.Contains(b.configMap[r.Name], r.Key) {
				t.Errorf("%s: env %s: ConfigMap %q key %q is not in the base", where, e.Name, r.Name, r.Key)
			}
		}
		// $(VAR) in args expands only a variable of the container.
		for _, a := range c.Args {
			for _, m := range regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`).FindAllStringSubmatch(a, -1) {
				if _, ok := env[m[1]]; !ok {
					t.Errorf("%s: arg %q refers to $(%s), which the container does not define", where, a, m[1])
				}
			}
		}

		checkSecurity(t, where, spec.SecurityContext, c.SecurityContext)
		checkResources(t, where, c.Resources)

		// Volume mounts name declared volumes; paths in args lie under a
		// mount, and name a file the mounted Secret or ConfigMap holds.
		mounts := map[string]string{} // mount path → volume
		for _, m := range c.VolumeMounts {
			used[m.Name] = true
			if _, ok := volumes[m.Name]; !ok && !claims[m.Name] {
				t.Errorf("%s: volumeMount %q names no volume or volumeClaimTemplate", where, m.Name)
			}
			if v, ok := volumes[m.Name]; ok && (v.Secret != nil || v.ConfigMap != nil) && !m.ReadOnly {
				t.Errorf("%s: volumeMount %q of a Secret or ConfigMap must be readOnly", where, m.Name)
			}
			mounts[m.MountPath] = m.Name
		}
		for _, a := range c.Args {
			if !strings.HasPrefix(a, "/") {
				continue
			}
			checkMountedPath(t, where, a, mounts, volumes, b.configMap)
		}

		// Ports: each declared port is opened by a listen flag.
		isInit := slices.ContainsFunc(spec.InitContainers, func(ic corev1.Container) bool { return ic.Name == c.Name })
		sub := subcommand(c.Args)
		listen := listeners(t, where, c.Args, env)
		ports := map[string]int32{}
		for _, p := range c.Ports {
			if p.Name != "" {
				ports[p.Name] = p.ContainerPort
			}
			if _, ok := listen[p.ContainerPort]; !ok {
				t.Errorf("%s: containerPort %d (%s): shoal %s listens on %v only", where, p.ContainerPort, p.Name, sub, listen)
			}
		}
		if isInit && (len(c.Ports) > 0 || c.LivenessProbe != nil || c.ReadinessProbe != nil || c.StartupProbe != nil || c.Lifecycle != nil) {
			t.Errorf("%s: an init container has no ports, probes or lifecycle hooks", where)
		}
		if !isInit && slices.Contains([]string{"gateway", "runner", "nats"}, sub) {
			if c.LivenessProbe == nil || c.ReadinessProbe == nil {
				t.Errorf("%s: shoal %s needs a liveness and a readiness probe", where, sub)
			}
		}
		for kind, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
			if p == nil {
				continue
			}
			checkProbe(t, where+" "+kind+"Probe", sub, kind, p, ports, listen)
		}

		// gateway and runner follow the catalog: a fixed manifest (-f)
		// would make them ignore shoal deploy.
		if sub == "gateway" || sub == "runner" {
			if _, ok := flagValue(c.Args, env, "file"); ok || slices.Contains(c.Args, "-f") {
				t.Errorf("%s: shoal %s with -f serves a fixed manifest; across machines it follows the catalog", where, sub)
			}
		}
		if sub == "nats" {
			checkNATSArgs(t, b, w, where, c)
		}
		checkNATSURLs(t, b, where, c.Args, env)

		// Shutdown: the grace period covers preStop and the drain.
		if isInit {
			continue
		}
		var preStop time.Duration
		if lc := c.Lifecycle; lc != nil {
			for name, h := range map[string]*corev1.LifecycleHandler{"preStop": lc.PreStop, "postStart": lc.PostStart} {
				if h != nil && h.Exec != nil {
					t.Errorf("%s: %s exec %v: the image has no shell and no tools; use the sleep action", where, name, h.Exec.Command)
				}
			}
			if lc.PreStop != nil && lc.PreStop.Sleep != nil {
				preStop = time.Duration(lc.PreStop.Sleep.Seconds) * time.Second
			}
		}
		if sub == "gateway" && preStop == 0 {
			t.Errorf("%s: the gateway needs a preStop sleep, so that its endpoint is gone before it drains", where)
		}
		// Only the long-running roles drain; a one-shot step has nothing to.
		if !slices.Contains([]string{"gateway", "runner", "nats"}, sub) {
			continue
		}
		if need := preStop + drainTimeout(t, c.Args, env); need > maxGrace {
			maxGrace = need
		}
	}
	for name := range volumes {
		if !used[name] {
			t.Errorf("%s: volume %q is mounted by no container", w, name)
		}
	}
	grace := time.Duration(ptrOr(spec.TerminationGracePeriodSeconds, 30)) * time.Second
	if grace <= maxGrace {
		t.Errorf("%s: terminationGracePeriodSeconds %v must exceed preStop sleep + drain timeout (%v), or the drain is cut short by SIGKILL", w, grace, maxGrace)
	}
}

func checkSecurity(t *testing.T, where string, pod *corev1.PodSecurityContext, c *corev1.SecurityContext) {
	t.Helper()
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	if c == nil {
		t.Errorf("%s: no securityContext", where)
		return
	}
	if c.AllowPrivilegeEscalation == nil || *c.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation must be false", where)
	}
	if c.ReadOnlyRootFilesystem == nil || !*c.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem must be true", where)
	}
	if c.Privileged != nil && *c.Privileged {
		t.Errorf("%s: privileged", where)
	}
	if c.Capabilities == nil || !slices.Equal(c.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(c.Capabilities.Add) > 0 {
		t.Errorf("%s: capabilities must drop ALL and add none, got %+v", where, c.Capabilities)
	}
	// Container settings win over the pod's.
	nonRoot := ptrOr(c.RunAsNonRoot, ptrOr(pod.RunAsNonRoot, false))
	user := ptrOr(c.RunAsUser, ptrOr(pod.RunAsUser, -1))
	seccomp := c.SeccompProfile
	if seccomp == nil {
		seccomp = pod.SeccompProfile
	}
	if !nonRoot {
		t.Errorf("%s: runAsNonRoot must be true", where)
	}
	if user != 65532 {
		t.Errorf("%s: runAsUser %d, want 65532 (distroless nonroot)", where, user)
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccompProfile must be RuntimeDefault", where)
	}
}

func checkResources(t *testing.T, where string, r corev1.ResourceRequirements) {
	t.Helper()
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okReq := r.Requests[name]
		lim, okLim := r.Limits[name]
		if !okReq || !okLim {
			t.Errorf("%s: resources need requests and limits of %s", where, name)
			continue
		}
		if req.Cmp(lim) > 0 {
			t.Errorf("%s: %s request %s above its limit %s", where, name, req.String(), lim.String())
		}
	}
}

// checkMountedPath checks that path p lies under a mount of the container
// and, for a Secret or ConfigMap, names a file it holds.
func checkMountedPath(t *testing.T, where, p string, mounts map[string]string, volumes map[string]corev1.Volume, configMaps map[string][]string) {
	t.Helper()
	for mp, vol := range mounts {
		rel, err := filepath.Rel(mp, p)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		v, ok := volumes[vol]
		if !ok || rel == "." {
			return // a claim, or the mount directory itself
		}
		switch {
		case v.Secret != nil:
			if !slices.Contains(externalSecrets[v.Secret.SecretName], rel) {
				t.Errorf("%s: %s: Secret %s holds %v, not %s", where, p, v.Secret.SecretName, externalSecrets[v.Secret.SecretName], rel)
			}
		case v.ConfigMap != nil:
			if !slices.Contains(configMaps[v.ConfigMap.Name], rel) {
				t.Errorf("%s: %s: ConfigMap %s holds %v, not %s", where, p, v.ConfigMap.Name, configMaps[v.ConfigMap.Name], rel)
			}
		}
		return
	}
	t.Errorf("%s: %s is under no volumeMount of the container (the image has nothing there)", where, p)
}

func checkProbe(t *testing.T, where, sub, kind string, p *corev1.Probe, ports map[string]int32, listen map[int32]string) {
	t.Helper()
	h := p.HTTPGet
	if h == nil {
		t.Errorf("%s: only httpGet probes work: the image has no shell or tools for exec", where)
		return
	}
	port := h.Port.IntVal
	if h.Port.Type == intstr.String {
		n, ok := ports[h.Port.StrVal]
		if !ok {
			t.Errorf("%s: port %q is no named containerPort of the container", where, h.Port.StrVal)
			return
		}
		port = n
	} else if !slices.Contains(slices.Collect(maps.Values(ports)), port) {
		t.Errorf("%s: port %d is no containerPort of the container", where, port)
	}
	flag, ok := listen[port]
	if !ok {
		t.Errorf("%s: nothing listens on port %d", where, port)
		return
	}
	served := healthPaths[sub][flag]
	if !slices.Contains(served, h.Path) {
		t.Errorf("%s: GET %s on the --%s listener of shoal %s; it serves %v", where, h.Path, flag, sub, served)
	}
	if want, ok := probePaths[sub][kind]; ok && h.Path != want {
		t.Errorf("%s: path %s, want %s", where, h.Path, want)
	}
}

// checkNATSArgs checks a NATS node of a StatefulSet: its name is the pod's,
// its routes list every pod of the StatefulSet through the governing
// headless Service, and JetStream syncs before every acknowledgement.
func checkNATSArgs(t *testing.T, b *k8sBase, w *workload, where string, c corev1.Container) {
	t.Helper()
	env := containerEnv(c)
	if w.kind != "StatefulSet" {
		t.Errorf("%s: a NATS node runs in a StatefulSet (stable names and volumes)", where)
		return
	}
	if v, _ := flagValue(c.Args, env, "sync"); v != "always" {
		t.Errorf("%s: --sync %q, want always (fsync before every JetStream acknowledgement; docs/deploy.md#durability)", where, v)
	}
	if v, _ := flagValue(c.Args, env, "name"); v != "$(POD_NAME)" {
		t.Errorf("%s: --name %q, want $(POD_NAME)", where, v)
	}
	pn := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "POD_NAME" })
	if pn < 0 || c.Env[pn].ValueFrom == nil || c.Env[pn].ValueFrom.FieldRef == nil || c.Env[pn].ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("%s: POD_NAME must come from the downward API (metadata.name)", where)
	}
	var sts *appsv1.StatefulSet
	for _, o := range b.objects {
		if s, ok := o.obj.(*appsv1.StatefulSet); ok && s.Name == w.name {
			sts = s
		}
	}
	if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("%s: podManagementPolicy must be Parallel: a JetStream cluster needs its quorum up to become ready", w)
	}
	var headless *corev1.Service
	for _, s := range b.services {
		if s.Name == sts.Spec.ServiceName {
			headless = s
		}
	}
	if headless == nil || headless.Spec.ClusterIP != corev1.ClusterIPNone || !headless.Spec.PublishNotReadyAddresses {
		t.Fatalf("%s: serviceName %q must be a headless Service with publishNotReadyAddresses", w, sts.Spec.ServiceName)
	}
	clusterListen, _ := flagValue(c.Args, env, "cluster-listen")
	_, clusterPort, _ := net.SplitHostPort(clusterListen)
	var want []string
	for i := range w.replicas {
		want = append(want, fmt.Sprintf("nats://%s-%d.%s.%s.svc:%s", w.name, i, headless.Name, b.kust.Namespace, clusterPort))
	}
	routes, _ := flagValue(c.Args, env, "routes")
	if got := strings.Split(routes, ","); !slices.Equal(got, want) {
		t.Errorf("%s: --routes %v, want every pod of the StatefulSet: %v", where, got, want)
	}
}

// checkNATSURLs checks that each --nats URL names a Service of the base
// that serves that port from NATS pods.
func checkNATSURLs(t *testing.T, b *k8sBase, where string, args []string, env map[string]string) {
	t.Helper()
	v, ok := flagValue(args, env, "nats")
	if !ok {
		return
	}
	for _, raw := range strings.Split(v, ",") {
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "nats" {
			t.Errorf("%s: --nats %q: want nats://SERVICE:PORT", where, raw)
			continue
		}
		found := false
		for _, s := range b.services {
			if s.Name != u.Hostname() {
				continue
			}
			for _, p := range s.Spec.Ports {
				if strconv.Itoa(int(p.Port)) == u.Port() {
					found = true
				}
			}
			for _, w := range b.selecting(labels.SelectorFromSet(s.Spec.Selector)) {
				for _, c := range w.pod.Spec.Containers {
					if subcommand(c.Args) != "nats" {
						t.Errorf("%s: --nats %s: Service %s selects %s, which is no NATS node", where, raw, s.Name, w)
					}
				}
			}
		}
		if !found {
			t.Errorf("%s: --nats %s: no Service %q with port %s in the base", where, raw, u.Hostname(), u.Port())
		}
	}
}

func TestDeployK8sServices(t *testing.T) {
	b := readK8sBase(t)
	for _, s := range b.services {
		where := "Service " + s.Name
		if len(s.Spec.Selector) == 0 {
			t.Errorf("%s: no selector", where)
			continue
		}
		ws := b.selecting(labels.SelectorFromSet(s.Spec.Selector))
		if len(ws) == 0 {
			t.Errorf("%s: selector %v matches no workload's pods", where, s.Spec.Selector)
		}
		for _, p := range s.Spec.Ports {
			target := p.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(p.Port)
			}
			for _, w := range ws {
				if !declaresPort(w, target) {
					t.Errorf("%s: port %s: targetPort %s is no containerPort of %s", where, p.Name, target.String(), w)
				}
			}
		}
	}
}

// declaresPort tells whether a container of w declares port (a name or a
// number).
func declaresPort(w *workload, port intstr.IntOrString) bool {
	for _, c := range w.pod.Spec.Containers {
		for _, p := range c.Ports {
			if (port.Type == intstr.String && p.Name == port.StrVal) || (port.Type == intstr.Int && p.ContainerPort == port.IntVal) {
				return true
			}
		}
	}
	return false
}

func TestDeployK8sAutoscalersAndBudgets(t *testing.T) {
	b := readK8sBase(t)
	for _, o := range b.objects {
		switch v := o.obj.(type) {
		case *autoscalingv2.HorizontalPodAutoscaler:
			ref := v.Spec.ScaleTargetRef
			w := b.workload(ref.Kind, ref.Name)
			if ref.APIVersion != "apps/v1" || w == nil {
				t.Errorf("%s: scaleTargetRef %+v is no workload of the base", o.where, ref)
				continue
			}
			if v.Spec.MinReplicas == nil || *v.Spec.MinReplicas < 1 || v.Spec.MaxReplicas < *v.Spec.MinReplicas {
				t.Errorf("%s: minReplicas %v maxReplicas %d", o.where, v.Spec.MinReplicas, v.Spec.MaxReplicas)
			}
			if v.Spec.MinReplicas != nil && w.replicas != *v.Spec.MinReplicas {
				t.Errorf("%s: %s starts with %d replicas, the autoscaler's minimum is %d", o.where, w, w.replicas, *v.Spec.MinReplicas)
			}
			// A CPU utilization target needs a CPU request on every container.
			for _, m := range v.Spec.Metrics {
				if m.Resource != nil && m.Resource.Name == corev1.ResourceCPU {
					for _, c := range w.pod.Spec.Containers {
						if _, ok := c.Resources.Requests[corev1.ResourceCPU]; !ok {
							t.Errorf("%s: CPU target, but %s container %s requests no CPU", o.where, w, c.Name)
						}
					}
				}
			}
		case *policyv1.PodDisruptionBudget:
			sel, err := metav1.LabelSelectorAsSelector(v.Spec.Selector)
			if err != nil || v.Spec.Selector == nil {
				t.Errorf("%s: selector: %v", o.where, err)
				continue
			}
			if ws := b.selecting(sel); len(ws) != 1 {
				t.Errorf("%s: selector %s selects %v; want exactly one workload", o.where, sel, ws)
			}
			if v.Spec.MaxUnavailable == nil || v.Spec.MinAvailable != nil {
				t.Errorf("%s: want maxUnavailable (it scales with the replicas), not minAvailable", o.where)
			}
		}
	}
	for _, w := range b.workloads {
		if w.kind == "Job" {
			continue // a one-shot step: nothing to keep available
		}
		sel, _ := metav1.LabelSelectorAsSelector(w.selector)
		found := false
		for _, o := range b.objects {
			if p, ok := o.obj.(*policyv1.PodDisruptionBudget); ok {
				ps, _ := metav1.LabelSelectorAsSelector(p.Spec.Selector)
				found = found || ps.String() == sel.String()
			}
		}
		if !found {
			t.Errorf("%s: no PodDisruptionBudget", w)
		}
	}
}

// TestDeployK8sNetworkPolicy evaluates the NetworkPolicies as the cluster
// would for the connections that matter.
func TestDeployK8sNetworkPolicy(t *testing.T) {
	b := readK8sBase(t)
	byComponent := map[string]*workload{}
	for _, w := range b.workloads {
		byComponent[w.pod.Labels["app.kubernetes.io/component"]] = w
	}
	nats, gateway, runner := byComponent["nats"], byComponent["gateway"], byComponent["runner"]
	if nats == nil || gateway == nil || runner == nil {
		t.Fatalf("want workloads of components nats, gateway and runner; got %v", mapKeysSlice(byComponent))
	}
	otherPod := map[string]string{"app": "something-else"}
	var outside map[string]string // nil: not a pod of the namespace
	cases := []struct {
		name  string
		src   map[string]string
		dst   *workload
		port  int32
		allow bool
	}{
		{"gateway to NATS clients", gateway.pod.Labels, nats, 4222, true},
		{"runner to NATS clients", runner.pod.Labels, nats, 4222, true},
		{"NATS to NATS routes", nats.pod.Labels, nats, 6222, true},
		{"NATS to NATS clients refused", nats.pod.Labels, nats, 4222, false},
		{"gateway to NATS routes refused", gateway.pod.Labels, nats, 6222, false},
		{"runner to NATS routes refused", runner.pod.Labels, nats, 6222, false},
		{"another pod to NATS clients refused", otherPod, nats, 4222, false},
		{"outside to NATS clients refused", outside, nats, 4222, false},
		{"another pod to NATS monitoring", otherPod, nats, 8222, true},
		{"outside to NATS monitoring refused", outside, nats, 8222, false},
		{"outside to gateway HTTP", outside, gateway, 8080, true},
		{"another pod to gateway HTTP", otherPod, gateway, 8080, true},
		{"outside to runner health refused", outside, runner, 8081, false},
		{"runner to runner health", runner.pod.Labels, runner, 8081, true},
	}
	for _, c := range cases {
		if got := npAllows(t, b.policies, c.src, c.dst, c.port); got != c.allow {
			t.Errorf("%s: allowed = %v, want %v", c.name, got, c.allow)
		}
	}
	// Every pod that connects to NATS (the deploy step's init containers
	// included) may reach its client port.
	for _, w := range b.workloads {
		for _, c := range w.allContainers() {
			if _, ok := flagValue(c.Args, containerEnv(c), "nats"); ok && !npAllows(t, b.policies, w.pod.Labels, nats, 4222) {
				t.Errorf("%s container %s connects to NATS, but the NetworkPolicies refuse it", w, c.Name)
			}
		}
	}
	for _, p := range b.policies {
		sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
		if err != nil || len(b.selecting(sel)) == 0 {
			t.Errorf("NetworkPolicy %s: podSelector selects no workload (%v)", p.Name, err)
		}
	}
}

func mapKeysSlice[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// npAllows tells whether a pod labelled src (nil: outside the namespace)
// may open a TCP connection to port of dst's pods.
func npAllows(t *testing.T, policies []*networkingv1.NetworkPolicy, src map[string]string, dst *workload, port int32) bool {
	t.Helper()
	selected := false
	for _, p := range policies {
		sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
		if err != nil {
			t.Fatalf("NetworkPolicy %s: %v", p.Name, err)
		}
		ingress := len(p.Spec.PolicyTypes) == 0 || slices.Contains(p.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
		if !ingress || !sel.Matches(labels.Set(dst.pod.Labels)) {
			continue
		}
		selected = true
		for _, r := range p.Spec.Ingress {
			if portMatches(r.Ports, dst, port) && peerMatches(t, r.From, src) {
				return true
			}
		}
	}
	return !selected
}

func portMatches(ports []networkingv1.NetworkPolicyPort, dst *workload, port int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		if p.Port == nil || (p.Port.Type == intstr.Int && p.Port.IntVal == port) {
			return true
		}
		if p.Port.Type == intstr.String {
			for _, c := range dst.pod.Spec.Containers {
				for _, cp := range c.Ports {
					if cp.Name == p.Port.StrVal && cp.ContainerPort == port {
						return true
					}
				}
			}
		}
	}
	return false
}

func peerMatches(t *testing.T, peers []networkingv1.NetworkPolicyPeer, src map[string]string) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		switch {
		case p.IPBlock != nil:
			if src == nil {
				return true
			}
		case p.NamespaceSelector != nil:
			// Pods of other namespaces: this evaluation has none but
			// "outside", which an empty namespace selector admits.
			if src == nil && len(p.NamespaceSelector.MatchLabels) == 0 && len(p.NamespaceSelector.MatchExpressions) == 0 {
				return true
			}
		case p.PodSelector != nil:
			sel, err := metav1.LabelSelectorAsSelector(p.PodSelector)
			if err != nil {
				t.Fatalf("podSelector: %v", err)
			}
			if src != nil && sel.Matches(labels.Set(src)) {
				return true
			}
		}
	}
	return false
}

// ---------------------------------------------------------------------------
// Compose

// composeProject is the part of the compose specification deploy/compose.yaml
// uses, with the spec's field names; x- extension fields are dropped first.
type composeProject struct {
	Name     string                    `json:"name"`
	Services map[string]composeService `json:"services"`
	Volumes  map[string]struct{}       `json:"volumes"`
}

type composeService struct {
	Image string `json:"image"`
	Build struct {
		Context    string `json:"context"`
		Dockerfile string `json:"dockerfile"`
	} `json:"build"`
	User        string            `json:"user"`
	ReadOnly    bool              `json:"read_only"`
	CapDrop     []string          `json:"cap_drop"`
	SecurityOpt []string          `json:"security_opt"`
	Command     []string          `json:"command"`
	Environment map[string]string `json:"environment"`
	Volumes     []string          `json:"volumes"`
	Ports       []string          `json:"ports"`
	DependsOn   map[string]struct {
		Condition string `json:"condition"`
	} `json:"depends_on"`
	Restart         string `json:"restart"`
	StopGracePeriod string `json:"stop_grace_period"`
}

func readCompose(t *testing.T) composeProject {
	t.Helper()
	raw, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		t.Fatalf("deploy/compose.yaml: %v", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(j, &top); err != nil {
		t.Fatal(err)
	}
	for k := range top {
		if strings.HasPrefix(k, "x-") {
			delete(top, k)
		}
	}
	j, _ = json.Marshal(top)
	var p composeProject
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("deploy/compose.yaml: %v", err)
	}
	return p
}

// composeMount is a short-syntax volume: SOURCE:TARGET[:ro].
type composeMount struct {
	source, target string
	readOnly, bind bool
}

func parseComposeMount(s string) (composeMount, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || (len(parts) == 3 && parts[2] != "ro" && parts[2] != "rw") {
		return composeMount{}, fmt.Errorf("volume %q: want SOURCE:TARGET[:ro]", s)
	}
	m := composeMount{source: parts[0], target: parts[1], readOnly: len(parts) == 3 && parts[2] == "ro"}
	m.bind = strings.HasPrefix(m.source, ".") || strings.HasPrefix(m.source, "/")
	return m, nil
}

func TestDeployCompose(t *testing.T) {
	p := readCompose(t)
	if len(p.Services) == 0 {
		t.Fatal("no services")
	}
	oneShot := map[string]bool{}
	for name, s := range p.Services {
		oneShot[name] = s.Restart == "no" || s.Restart == "on-failure"
	}
	// after is every service a service waits for, directly or not.
	after := func(name string) map[string]bool {
		seen := map[string]bool{}
		var walk func(string)
		walk = func(n string) {
			for d := range p.Services[n].DependsOn {
				if !seen[d] {
					seen[d] = true
					walk(d)
				}
			}
		}
		walk(name)
		return seen
	}

	var natsNodes []string
	for name, s := range p.Services {
		if subcommand(s.Command) == "nats" {
			natsNodes = append(natsNodes, name)
		}
	}
	slices.Sort(natsNodes)
	if len(natsNodes) != 3 {
		t.Errorf("want a three-node NATS cluster, got %v", natsNodes)
	}
	counts := map[string]int{}
	hostPorts := map[string]string{}
	for name, s := range p.Services {
		where := "service " + name
		sub := subcommand(s.Command)
		counts[sub]++
		if s.Image != "shoal:local" || s.Build.Context != ".." || s.Build.Dockerfile != "deploy/Dockerfile" {
			t.Errorf("%s: image %q build %+v: want shoal:local built from deploy/Dockerfile in the repository root", where, s.Image, s.Build)
		}
		if _, err := os.Stat(filepath.Join(deployDir, s.Build.Context, s.Build.Dockerfile)); err != nil {
			t.Errorf("%s: %v", where, err)
		}
		if s.User != "65532:65532" || !s.ReadOnly || !slices.Equal(s.CapDrop, []string{"ALL"}) || !slices.Contains(s.SecurityOpt, "no-new-privileges:true") {
			t.Errorf("%s: want user 65532:65532, read_only, cap_drop ALL and no-new-privileges", where)
		}
		if !slices.Contains([]string{"no", "on-failure", "unless-stopped", "always"}, s.Restart) {
			t.Errorf("%s: restart %q", where, s.Restart)
		}
		for dep, d := range s.DependsOn {
			if _, ok := p.Services[dep]; !ok {
				t.Errorf("%s: depends_on %q: no such service", where, dep)
			}
			switch d.Condition {
			case "service_started":
			case "service_completed_successfully":
				if !oneShot[dep] {
					t.Errorf("%s: waits for %s to complete, which runs forever", where, dep)
				}
			default:
				t.Errorf("%s: depends_on %s condition %q (there are no health checks: the image has no tools to run them)", where, dep, d.Condition)
			}
		}
		if after(name)[name] {
			t.Errorf("%s: depends on itself", where)
		}

		// Volumes: named ones are declared; bind sources exist; only init
		// writes the shared credentials.
		targets := map[string]composeMount{}
		for _, v := range s.Volumes {
			m, err := parseComposeMount(v)
			if err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			targets[m.target] = m
			if m.bind {
				if _, err := os.Stat(filepath.Join(deployDir, m.source)); err != nil {
					t.Errorf("%s: bind mount %s: %v", where, v, err)
				}
				if !m.readOnly {
					t.Errorf("%s: bind mount %s must be read-only", where, v)
				}
				continue
			}
			if _, ok := p.Volumes[m.source]; !ok {
				t.Errorf("%s: volume %q is not declared under volumes", where, m.source)
			}
			if m.source == "shoal-data" {
				if sub == "init" && m.readOnly {
					t.Errorf("%s: init writes shoal-data", where)
				}
				if sub != "init" {
					if !m.readOnly {
						t.Errorf("%s: shoal-data holds every role's seed: mount it read-only", where)
					}
					if !after(name)["init"] {
						t.Errorf("%s: reads shoal-data, but does not wait for init", where)
					}
				}
			}
		}
		for _, a := range s.Command {
			if !strings.HasPrefix(a, "/") {
				continue
			}
			found := false
			for target := range targets {
				if rel, err := filepath.Rel(target, a); err == nil && !strings.HasPrefix(rel, "..") {
					found = true
				}
			}
			if !found {
				t.Errorf("%s: %s is under no volume of the service", where, a)
			}
		}

		// Ports: the container side is one the command listens on.
		listen := listeners(t, where, s.Command, s.Environment)
		for _, ps := range s.Ports {
			parts := strings.Split(ps, ":")
			n, err := strconv.ParseInt(parts[len(parts)-1], 10, 32)
			if err != nil || len(parts) < 2 {
				t.Errorf("%s: port %q: want [IP:]HOST:CONTAINER", where, ps)
				continue
			}
			if _, ok := listen[int32(n)]; !ok {
				t.Errorf("%s: port %s: shoal %s listens on %v only", where, ps, sub, listen)
			}
			host := strings.Join(parts[:len(parts)-1], ":")
			if other, dup := hostPorts[host]; dup {
				t.Errorf("%s: host port %s also published by %s", where, host, other)
			}
			hostPorts[host] = name
		}

		// NATS URLs name NATS services.
		if v, ok := flagValue(s.Command, s.Environment, "nats"); ok {
			var want []string
			for _, n := range natsNodes {
				want = append(want, "nats://"+n+":4222")
			}
			if got := strings.Split(v, ","); !slices.Equal(got, want) {
				t.Errorf("%s: --nats %v, want every node: %v", where, got, want)
			}
			if !after(name)["init"] {
				t.Errorf("%s: connects to NATS, but does not wait for init (credentials)", where)
			}
		}

		switch sub {
		case "nats":
			if v, _ := flagValue(s.Command, s.Environment, "name"); v != name {
				t.Errorf("%s: --name %q, want the service name", where, v)
			}
			if v, _ := flagValue(s.Command, s.Environment, "sync"); v != "always" {
				t.Errorf("%s: --sync %q, want always (docs/deploy.md#durability)", where, v)
			}
			if v, _ := flagValue(s.Command, s.Environment, "cluster-advertise"); v != name+":6222" {
				t.Errorf("%s: --cluster-advertise %q, want %s:6222", where, v, name)
			}
			var want []string
			for _, n := range natsNodes {
				want = append(want, "nats://"+n+":6222")
			}
			if v, _ := flagValue(s.Command, s.Environment, "routes"); !slices.Equal(strings.Split(v, ","), want) {
				t.Errorf("%s: --routes %q, want %v", where, v, want)
			}
			if _, ok := targets["/data"]; !ok || targets["/data"].bind {
				t.Errorf("%s: JetStream (--data /data) needs a named volume of its own at /data", where)
			}
		case "gateway", "runner":
			if _, ok := flagValue(s.Command, s.Environment, "file"); ok || slices.Contains(s.Command, "-f") {
				t.Errorf("%s: shoal %s with -f serves a fixed manifest; it must follow the catalog", where, sub)
			}
			if deps := after(name); !deps["deploy"] || !deps["publish-keys"] {
				t.Errorf("%s: must start after deploy and publish-keys, got %v", where, mapKeysSlice(deps))
			}
		case "deploy", "key publish":
			if v, _ := flagValue(s.Command, s.Environment, "replicas"); v != "3" {
				t.Errorf("%s: --replicas %q, want 3: platform state is replicated on every node", where, v)
			}
		}
		if sub == "deploy" && !slices.Contains(s.Command, "--prune") {
			t.Errorf("%s: deploy without --prune keeps functions removed from fn.yaml", where)
		}

		// Shutdown: the stop grace period covers the drain.
		if !oneShot[name] {
			grace, err := time.ParseDuration(s.StopGracePeriod)
			if err != nil {
				t.Errorf("%s: stop_grace_period %q: %v", where, s.StopGracePeriod, err)
			} else if drain := drainTimeout(t, s.Command, s.Environment); grace <= drain {
				t.Errorf("%s: stop_grace_period %v must exceed the drain timeout %v", where, grace, drain)
			}
		}
	}
	if counts["gateway"] != 2 || counts["runner"] != 3 || counts["init"] != 1 || counts["deploy"] != 1 || counts["key publish"] != 1 {
		t.Errorf("want 2 gateways, 3 runners and one each of init, key publish, deploy; got %v", counts)
	}
	if got := slices.Sorted(maps.Keys(hostPorts)); !slices.Contains(got, "8080") || !slices.Contains(got, "8081") {
		t.Errorf("host ports %v: want the gateways on 8080 and 8081", got)
	}
	servesAuth := 0
	for _, s := range p.Services {
		if _, ok := flagValue(s.Command, s.Environment, "key"); ok && subcommand(s.Command) == "runner" {
			servesAuth++
			if nk, _ := flagValue(s.Command, s.Environment, "nats-nkey"); path.Base(nk) != "auth.nk" {
				t.Errorf("a runner with --key connects as the auth role; --nats-nkey %s", nk)
			}
		}
	}
	if servesAuth == 0 {
		t.Error("no runner serves the auth function (--key)")
	}
}

// ---------------------------------------------------------------------------
// Command lines, against the real command tree

// checkShoalArgs parses a command line with a fresh shoal command tree: the
// subcommand must exist and run, every flag must be one of it (its own or
// inherited) with a valid value, and no positional argument is left; every
// SHOAL_* variable of env must set a flag of it, with a valid value when
// literal (empty values come from elsewhere and are not checked).
func checkShoalArgs(args []string, env map[string]string) []string {
	root := newRootCmd()
	cmd, rest, err := root.Find(args)
	if err != nil {
		return []string{fmt.Sprintf("shoal %s: %v", strings.Join(args, " "), err)}
	}
	if cmd == root || !cmd.Runnable() {
		return []string{fmt.Sprintf("shoal %s: %q is no runnable shoal subcommand", strings.Join(args, " "), subcommand(args))}
	}
	var problems []string
	if err := cmd.ParseFlags(rest); err != nil {
		problems = append(problems, fmt.Sprintf("%s: %v", cmd.CommandPath(), err))
	} else if pos := cmd.Flags().Args(); len(pos) > 0 {
		problems = append(problems, fmt.Sprintf("%s: unexpected arguments %q", cmd.CommandPath(), pos))
	}
	for _, k := range slices.Sorted(maps.Keys(env)) {
		name, ok := strings.CutPrefix(k, "SHOAL_")
		if !ok {
			continue
		}
		if !acceptsEnv(cmd) {
			problems = append(problems, fmt.Sprintf("%s: %s is set, but this command does not read its flags from the environment", cmd.CommandPath(), k))
			continue
		}
		flag := strings.ToLower(strings.ReplaceAll(name, "_", "-"))
		f := lookupFlag(cmd, flag)
		if f == nil {
			problems = append(problems, fmt.Sprintf("%s: %s sets --%s, which it does not have", cmd.CommandPath(), k, flag))
			continue
		}
		if f.Hidden || len(f.Annotations[envAnnotation]) > 0 {
			problems = append(problems, fmt.Sprintf("%s: %s is set, but --%s is never read from the environment", cmd.CommandPath(), k, flag))
			continue
		}
		if v := env[k]; v != "" {
			if err := f.Value.Set(v); err != nil {
				problems = append(problems, fmt.Sprintf("%s: %s=%q: %v", cmd.CommandPath(), k, v, err))
			}
		}
	}
	return problems
}

func lookupFlag(cmd *cobra.Command, name string) *pflag.Flag {
	if f := cmd.Flags().Lookup(name); f != nil {
		return f
	}
	return cmd.InheritedFlags().Lookup(name)
}

// TestShoalArgsCheck pins down checkShoalArgs on flags that exist today.
func TestShoalArgsCheck(t *testing.T) {
	cases := []struct {
		name string
		args []string
		env  map[string]string
		ok   bool
	}{
		{"real flags", []string{"gateway", "--http", "0.0.0.0:8080", "--drain-timeout", "30s"}, nil, true},
		{"shorthand and persistent flag", []string{"runner", "-f", "fn.yaml", "--log-format", "json"}, nil, true},
		{"env sets a flag", []string{"gateway"}, map[string]string{"SHOAL_NATS": "nats://x:4222", "SHOAL_LOG_FORMAT": "json", "POD_NAME": ""}, true},
		{"env from elsewhere is not parsed", []string{"gateway"}, map[string]string{"SHOAL_MAX_BODY": ""}, true},
		{"unknown subcommand", []string{"gatewya", "--http", ":8080"}, nil, false},
		{"group without a run", []string{"key", "--nats", "nats://x:4222"}, nil, false},
		{"unknown flag", []string{"gateway", "--htttp", "0.0.0.0:8080"}, nil, false},
		{"flag of another subcommand", []string{"gateway", "--key", "k.jwks"}, nil, false},
		{"bad value", []string{"gateway", "--drain-timeout", "30"}, nil, false},
		{"positional argument", []string{"runner", "extra"}, nil, false},
		{"env naming no flag", []string{"gateway"}, map[string]string{"SHOAL_GATEWAY_PORT": "tcp://10.0.0.1:80"}, false},
		{"env with a bad value", []string{"gateway"}, map[string]string{"SHOAL_MAX_INFLIGHT": "many"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			problems := checkShoalArgs(c.args, c.env)
			if ok := len(problems) == 0; ok != c.ok {
				t.Errorf("checkShoalArgs(%q, %v) = %q; want ok = %v", c.args, c.env, problems, c.ok)
			}
		})
	}
}

// TestDeployCommands runs every command line of deploy/ through the command
// tree: each container of the Kubernetes base, each compose service.
func TestDeployCommands(t *testing.T) {
	b := readK8sBase(t)
	for _, w := range b.workloads {
		for _, c := range w.allContainers() {
			for _, p := range checkShoalArgs(c.Args, containerEnv(c)) {
				t.Errorf("deploy/k8s %s container %s: %s", w, c.Name, p)
			}
		}
	}
	p := readCompose(t)
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		s := p.Services[name]
		for _, pr := range checkShoalArgs(s.Command, s.Environment) {
			t.Errorf("deploy/compose.yaml service %s: %s", name, pr)
		}
	}
}

// ---------------------------------------------------------------------------
// fn.yaml, the Dockerfile and the documentation

func TestDeployFnYAMLCopies(t *testing.T) {
	root, err := os.ReadFile("../../fn.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"../../fn.yaml", k8sDir + "/fn.yaml"} {
		if _, err := loadManifest(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, root) {
			t.Errorf("%s differs from fn.yaml at the repository root; copy it: cp fn.yaml deploy/k8s/fn.yaml", p)
		}
	}
}

func TestDeployDockerfile(t *testing.T) {
	raw, err := os.ReadFile(deployDir + "/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(raw)
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(string(gomod))
	for _, want := range []string{
		"ARG GO_VERSION=" + goVersion[1] + "\n",
		"FROM golang:${GO_VERSION}-bookworm AS build",
		"COPY go.mod go.sum ./",
		"CGO_ENABLED=0 go build -trimpath",
		"./cmd/shoal",
		"FROM gcr.io/distroless/static-debian12:nonroot",
		"COPY --from=build /out/shoal /usr/local/bin/shoal",
		"USER nonroot:nonroot",
		`ENTRYPOINT ["/usr/local/bin/shoal"]`,
		"EXPOSE 4222 6222 8222 8080 8081",
		`org.opencontainers.image.licenses="Apache-2.0"`,
		"org.opencontainers.image.source=",
	} {
		if !strings.Contains(df, want) {
			t.Errorf("deploy/Dockerfile lacks %q", want)
		}
	}
	if !strings.Contains(df, `org.opencontainers.image.version="${VERSION}"`) || !strings.Contains(df, "ARG VERSION="+shoal.Version+"\n") {
		t.Errorf("deploy/Dockerfile: the version label must default to shoal.Version %s", shoal.Version)
	}
}

func TestDeployDocsCreateEverySecret(t *testing.T) {
	raw, err := os.ReadFile("../../docs/deploy.md")
	if err != nil {
		t.Fatal(err)
	}
	for name, files := range externalSecrets {
		m := regexp.MustCompile(`kubectl (-n \S+ )?create secret generic ` + name + ` [^\n]*`).FindString(string(raw))
		if m == "" {
			t.Errorf("docs/deploy.md has no kubectl create secret generic %s", name)
			continue
		}
		if name == "shoal-nats-credentials" {
			continue // the whole credentials directory
		}
		for _, f := range files {
			if !strings.Contains(m, f) {
				t.Errorf("docs/deploy.md: %q does not put %s in the Secret", m, f)
			}
		}
	}
}
