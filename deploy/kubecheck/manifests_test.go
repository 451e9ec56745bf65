package kubecheck

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// serviceMonitor is the part of the Prometheus Operator's ServiceMonitor
// (monitoring.coreos.com/v1) Balise uses, decoded strictly.
type serviceMonitor struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		JobLabel          string               `json:"jobLabel"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// kustomization is kustomize's file, as far as Balise uses it.
type kustomization struct {
	metav1.TypeMeta `json:",inline"`
	Namespace       string   `json:"namespace"`
	Resources       []string `json:"resources"`
}

// manifests holds every object of deploy/kubernetes, by kind.
type manifests struct {
	files           []string
	namespaces      []corev1.Namespace
	configMaps      []corev1.ConfigMap
	secrets         []corev1.Secret
	services        []corev1.Service
	deployments     []appsv1.Deployment
	daemonSets      []appsv1.DaemonSet
	pdbs            []policyv1.PodDisruptionBudget
	networkPolicies []networkingv1.NetworkPolicy
	serviceMonitors []serviceMonitor
	kustomizations  []kustomization
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// decodeStrict decodes one YAML document into out, rejecting unknown and
// duplicate fields, and returns out.
func decodeStrict[T any](doc []byte, out *T) (*T, error) {
	return out, yaml.UnmarshalStrict(doc, out)
}

// loadManifests decodes every YAML document under kubernetes/ strictly
// into the API type its apiVersion and kind name.
func loadManifests(t *testing.T) *manifests {
	t.Helper()
	files, err := filepath.Glob("../kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	m := &manifests{}
	for _, f := range files {
		m.files = append(m.files, filepath.Base(f))
		for i, doc := range docSeparator.Split(string(readFile(t, f)), -1) {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			if err := m.add([]byte(doc)); err != nil {
				t.Errorf("%s document %d: %v", f, i+1, err)
			}
		}
	}
	return m
}

func (m *manifests) add(doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	var err error
	switch gvk := tm.APIVersion + " " + tm.Kind; gvk {
	case "v1 Namespace":
		var o *corev1.Namespace
		if o, err = decodeStrict(doc, &corev1.Namespace{}); err == nil {
			m.namespaces = append(m.namespaces, *o)
		}
	case "v1 ConfigMap":
		var o *corev1.ConfigMap
		if o, err = decodeStrict(doc, &corev1.ConfigMap{}); err == nil {
			m.configMaps = append(m.configMaps, *o)
		}
	case "v1 Secret":
		var o *corev1.Secret
		if o, err = decodeStrict(doc, &corev1.Secret{}); err == nil {
			m.secrets = append(m.secrets, *o)
		}
	case "v1 Service":
		var o *corev1.Service
		if o, err = decodeStrict(doc, &corev1.Service{}); err == nil {
			m.services = append(m.services, *o)
		}
	case "apps/v1 Deployment":
		var o *appsv1.Deployment
		if o, err = decodeStrict(doc, &appsv1.Deployment{}); err == nil {
			m.deployments = append(m.deployments, *o)
		}
	case "apps/v1 DaemonSet":
		var o *appsv1.DaemonSet
		if o, err = decodeStrict(doc, &appsv1.DaemonSet{}); err == nil {
			m.daemonSets = append(m.daemonSets, *o)
		}
	case "policy/v1 PodDisruptionBudget":
		var o *policyv1.PodDisruptionBudget
		if o, err = decodeStrict(doc, &policyv1.PodDisruptionBudget{}); err == nil {
			m.pdbs = append(m.pdbs, *o)
		}
	case "networking.k8s.io/v1 NetworkPolicy":
		var o *networkingv1.NetworkPolicy
		if o, err = decodeStrict(doc, &networkingv1.NetworkPolicy{}); err == nil {
			m.networkPolicies = append(m.networkPolicies, *o)
		}
	case "monitoring.coreos.com/v1 ServiceMonitor":
		var o *serviceMonitor
		if o, err = decodeStrict(doc, &serviceMonitor{}); err == nil {
			m.serviceMonitors = append(m.serviceMonitors, *o)
		}
	case "kustomize.config.k8s.io/v1beta1 Kustomization":
		var o *kustomization
		if o, err = decodeStrict(doc, &kustomization{}); err == nil {
			m.kustomizations = append(m.kustomizations, *o)
		}
	default:
		return fmt.Errorf("unexpected kind %q: teach this test its type", gvk)
	}
	return err
}

// TestStrictDecodingCatchesTypos proves the decoding above is strict.
func TestStrictDecodingCatchesTypos(t *testing.T) {
	docs := []string{
		"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 2\n",
		"apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  externalTrafficPolicy: Local\n  ports: [{port: 53, protocl: UDP}]\n",
		"apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: x}\nspec:\n  endpoints: [{port: metrics, intervall: 15s}]\n",
		"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\ndata: {c: d}\n",
		"apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n",
	}
	for _, d := range docs {
		if err := (&manifests{}).add([]byte(d)); err == nil {
			t.Errorf("add(%q) = nil, want an error", d)
		}
	}
}

func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)
	if t.Failed() {
		t.FailNow()
	}

	// Every object lives in the balise namespace, which exists.
	if len(m.namespaces) != 1 || m.namespaces[0].Name != "balise" {
		t.Fatalf("namespaces %v, want one named balise", m.namespaces)
	}
	if got := m.namespaces[0].Labels["pod-security.kubernetes.io/enforce"]; got != "restricted" {
		t.Errorf("namespace pod security %q, want restricted", got)
	}
	namespaced := []metav1.ObjectMeta{}
	for _, o := range m.configMaps {
		namespaced = append(namespaced, o.ObjectMeta)
	}
	for _, o := range m.secrets {
		namespaced = append(namespaced, o.ObjectMeta)
	}
	for _, o := range m.services {
		namespaced = append(namespaced, o.ObjectMeta)
	}
	for _, o := range m.deployments {
		namespaced = append(namespaced, o.ObjectMeta)
	}
	for _, o := range m.pdbs {
		namespaced = append(namespaced, o.ObjectMeta)
	}
	for _, o := range m.networkPolicies {
		namespaced = append(namespaced, o.ObjectMeta)
	}
	for _, o := range m.serviceMonitors {
		namespaced = append(namespaced, o.Metadata)
	}
	for _, o := range namespaced {
		if o.Namespace != "balise" {
			t.Errorf("%s is in namespace %q, want balise", o.Name, o.Namespace)
		}
	}

	// kustomization.yaml lists every other file but the templates
	// (*.example.yaml: Secrets created with kubectl, which an apply of
	// placeholders would overwrite).
	if len(m.kustomizations) != 1 {
		t.Fatalf("%d kustomizations, want 1", len(m.kustomizations))
	}
	want := slices.DeleteFunc(slices.Clone(m.files), func(f string) bool {
		return f == "kustomization.yaml" || strings.HasSuffix(f, ".example.yaml")
	})
	got := slices.Sorted(slices.Values(m.kustomizations[0].Resources))
	if !slices.Equal(got, want) {
		t.Errorf("kustomization resources %v, want %v", got, want)
	}

	if len(m.configMaps) != 1 {
		t.Fatalf("%d ConfigMaps, want 1", len(m.configMaps))
	}
	cm := m.configMaps[0]
	byComponent := map[string]appsv1.Deployment{}
	for _, d := range m.deployments {
		byComponent[d.Labels["app.kubernetes.io/component"]] = d
		checkDeployment(t, d, cm)
	}
	for _, c := range []string{"dns", "proxy"} {
		if _, ok := byComponent[c]; !ok {
			t.Errorf("no Deployment with component %s", c)
		}
	}

	// Services select pods and reach named container ports; client
	// addresses are preserved on the external ones.
	services := map[string]corev1.Service{}
	for _, s := range m.services {
		services[s.Name] = s
		pods := matchingPods(m.deployments, s.Spec.Selector)
		if len(pods) == 0 {
			t.Errorf("Service %s selects no pod", s.Name)
		}
		for _, p := range s.Spec.Ports {
			for _, d := range pods {
				if !hasContainerPort(d, p.TargetPort.StrVal, p.Protocol) {
					t.Errorf("Service %s port %s: Deployment %s has no %s container port %q", s.Name, p.Name, d.Name, p.Protocol, p.TargetPort.StrVal)
				}
			}
		}
		if s.Spec.Type == corev1.ServiceTypeLoadBalancer && s.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
			t.Errorf("Service %s: externalTrafficPolicy %q, want Local (the policy needs client addresses)", s.Name, s.Spec.ExternalTrafficPolicy)
		}
	}
	checkServicePorts(t, services["balise-dns"], map[string]int32{"UDP": 53, "TCP": 53})
	checkServicePorts(t, services["balise-proxy"], map[string]int32{"TCP": 3128})

	// PodDisruptionBudgets cover both front-ends.
	covered := map[string]bool{}
	for _, p := range m.pdbs {
		pods := matchingPods(m.deployments, p.Spec.Selector.MatchLabels)
		if len(pods) != 1 {
			t.Errorf("PodDisruptionBudget %s selects %d Deployments, want 1", p.Name, len(pods))
			continue
		}
		if err := checkBudget(p.Spec, int(*pods[0].Spec.Replicas)); err != nil {
			t.Errorf("PodDisruptionBudget %s: %v", p.Name, err)
		}
		covered[pods[0].Name] = true
	}
	for _, d := range m.deployments {
		if !covered[d.Name] {
			t.Errorf("Deployment %s has no PodDisruptionBudget", d.Name)
		}
	}

	// NetworkPolicies: one per front-end, admitting its own port.
	for _, d := range m.deployments {
		found := false
		for _, np := range m.networkPolicies {
			if !selects(np.Spec.PodSelector.MatchLabels, d.Spec.Template.Labels) {
				continue
			}
			found = true
			for _, c := range d.Spec.Template.Spec.Containers {
				for _, p := range c.Ports {
					if !admits(np, p.ContainerPort, p.Protocol) {
						t.Errorf("NetworkPolicy %s blocks %s port %d/%s", np.Name, d.Name, p.ContainerPort, p.Protocol)
					}
				}
			}
		}
		if !found {
			t.Errorf("no NetworkPolicy selects Deployment %s", d.Name)
		}
	}

	// The ServiceMonitor scrapes the metrics Service's port.
	if len(m.serviceMonitors) != 1 {
		t.Fatalf("%d ServiceMonitors, want 1", len(m.serviceMonitors))
	}
	sm := m.serviceMonitors[0]
	var target *corev1.Service
	for _, s := range m.services {
		if selects(sm.Spec.Selector.MatchLabels, s.Labels) {
			if target != nil {
				t.Errorf("ServiceMonitor selects Services %s and %s: replicas would be scraped twice", target.Name, s.Name)
			}
			target = &s
		}
	}
	if target == nil {
		t.Fatal("ServiceMonitor selects no Service")
	}
	if sm.Spec.JobLabel == "" || target.Labels[sm.Spec.JobLabel] != "balise" {
		t.Errorf("ServiceMonitor jobLabel %q gives job %q, want balise (the alerts select it)", sm.Spec.JobLabel, target.Labels[sm.Spec.JobLabel])
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Fatalf("ServiceMonitor endpoints %+v, want one on /metrics", sm.Spec.Endpoints)
	}
	if !slices.ContainsFunc(target.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == sm.Spec.Endpoints[0].Port }) {
		t.Errorf("ServiceMonitor port %q is not a port of Service %s", sm.Spec.Endpoints[0].Port, target.Name)
	}
	if !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{"balise"}) {
		t.Errorf("ServiceMonitor namespaces %v, want [balise]", sm.Spec.NamespaceSelector.MatchNames)
	}
}

// checkDeployment checks one front-end's pod template.
func checkDeployment(t *testing.T, d appsv1.Deployment, cm corev1.ConfigMap) {
	t.Helper()
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("Deployment %s: want at least 2 replicas", d.Name)
	}
	if !selects(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("Deployment %s: selector does not match its pods", d.Name)
	}
	if ru := d.Spec.Strategy.RollingUpdate; ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("Deployment %s: rolling updates must keep every replica (maxUnavailable 0)", d.Name)
	}
	ps := d.Spec.Template.Spec
	if sc := ps.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.SeccompProfile == nil {
		t.Errorf("Deployment %s: pod must run as non-root with a seccomp profile", d.Name)
	}
	if len(ps.Containers) != 1 {
		t.Fatalf("Deployment %s: %d containers, want 1", d.Name, len(ps.Containers))
	}
	c := ps.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("Deployment %s: container must drop ALL capabilities, forbid escalation, read-only root", d.Name)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"liveness", c.LivenessProbe, "/healthz"},
		{"readiness", c.ReadinessProbe, "/readyz"},
	} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.StrVal != "metrics" {
			t.Errorf("Deployment %s: %s probe must GET %s on the metrics port", d.Name, p.name, p.path)
		}
	}
	if !hasContainerPort(d, "metrics", corev1.ProtocolTCP) {
		t.Errorf("Deployment %s: no metrics container port", d.Name)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("Deployment %s: want a CPU request and a memory limit", d.Name)
	}

	// The config file it runs is a key of the ConfigMap mounted at
	// /etc/balise, and its listen ports are the container ports.
	i := slices.Index(c.Args, "--config")
	if len(c.Args) == 0 || c.Args[0] != "serve" || i < 0 || i+1 >= len(c.Args) {
		t.Fatalf("Deployment %s: args %q, want serve --config FILE", d.Name, c.Args)
	}
	dir, key := filepath.Split(c.Args[i+1])
	if !slices.ContainsFunc(c.VolumeMounts, func(v corev1.VolumeMount) bool {
		return filepath.Clean(v.MountPath) == filepath.Clean(dir) && slices.ContainsFunc(ps.Volumes, func(vol corev1.Volume) bool {
			return vol.Name == v.Name && vol.ConfigMap != nil && vol.ConfigMap.Name == cm.Name
		})
	}) {
		t.Errorf("Deployment %s: %s is not on a mount of ConfigMap %s", d.Name, dir, cm.Name)
	}
	text, ok := cm.Data[key]
	if !ok {
		t.Fatalf("Deployment %s: ConfigMap %s has no key %s", d.Name, cm.Name, key)
	}
	var cfg struct {
		DNS     struct{ Listen []string } `toml:"dns"`
		Proxy   struct{ Listen []string } `toml:"proxy"`
		Metrics struct{ Listen []string } `toml:"metrics"`
	}
	if _, err := toml.Decode(text, &cfg); err != nil {
		t.Fatalf("ConfigMap key %s: %v", key, err)
	}
	for _, l := range []struct {
		addrs []string
		proto corev1.Protocol
	}{
		{cfg.DNS.Listen, corev1.ProtocolUDP}, {cfg.DNS.Listen, corev1.ProtocolTCP},
		{cfg.Proxy.Listen, corev1.ProtocolTCP}, {cfg.Metrics.Listen, corev1.ProtocolTCP},
	} {
		for _, a := range l.addrs {
			_, port, _ := strings.Cut(a, ":")
			if !strings.HasPrefix(a, "0.0.0.0:") && !strings.HasPrefix(a, "[::]:") {
				t.Errorf("%s: listen %q is unreachable from outside the pod", key, a)
			}
			if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return fmt.Sprint(p.ContainerPort) == port && p.Protocol == l.proto }) {
				t.Errorf("Deployment %s: %s listens on %s but declares no %s container port %s", d.Name, key, a, l.proto, port)
			}
		}
	}
}

// TestKubernetesPoliciesAgree checks that the DNS and proxy configs differ
// only by their listeners, so both front-ends enforce one policy.
func TestKubernetesPoliciesAgree(t *testing.T) {
	m := loadManifests(t)
	if len(m.configMaps) != 1 {
		t.Fatalf("%d ConfigMaps, want 1", len(m.configMaps))
	}
	keys := slices.Sorted(maps.Keys(m.configMaps[0].Data))
	if len(keys) < 2 {
		t.Fatalf("ConfigMap keys %v, want one config per front-end", keys)
	}
	var first map[string]any
	for _, k := range keys {
		var doc map[string]any
		if _, err := toml.Decode(m.configMaps[0].Data[k], &doc); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		for _, front := range []string{"dns", "proxy", "metrics"} {
			delete(doc, front)
		}
		if first == nil {
			first = doc
		} else if !reflect.DeepEqual(doc, first) {
			t.Errorf("ConfigMap key %s differs from %s outside [dns], [proxy] and [metrics]", k, keys[0])
		}
	}
}

func matchingPods(ds []appsv1.Deployment, selector map[string]string) []appsv1.Deployment {
	var out []appsv1.Deployment
	for _, d := range ds {
		if selects(selector, d.Spec.Template.Labels) {
			out = append(out, d)
		}
	}
	return out
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func hasContainerPort(d appsv1.Deployment, name string, proto corev1.Protocol) bool {
	for _, c := range d.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == name && (p.Protocol == proto || proto == "" && p.Protocol == corev1.ProtocolTCP) {
				return true
			}
		}
	}
	return false
}

func checkServicePorts(t *testing.T, s corev1.Service, want map[string]int32) {
	t.Helper()
	got := map[string]int32{}
	for _, p := range s.Spec.Ports {
		got[string(p.Protocol)] = p.Port
	}
	if !maps.Equal(got, want) {
		t.Errorf("Service %q ports %v, want %v", s.Name, got, want)
	}
}

// admits reports whether some ingress rule of np lets traffic reach port.
func admits(np networkingv1.NetworkPolicy, port int32, proto corev1.Protocol) bool {
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			if p.Port != nil && int32(p.Port.IntValue()) == port && p.Protocol != nil && *p.Protocol == proto {
				return true
			}
		}
	}
	return false
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
