package kubecheck

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// placeholder is the only value a Secret in deploy/kubernetes may hold:
// real secrets are created with kubectl, never kept in a file.
const placeholder = "REMPLACER-CHANGE-ME"

// registerConfig is the part of a front-end's config these checks read.
type registerConfig struct {
	Exceptions *struct {
		Store             string `toml:"store"`
		StorePasswordFile string `toml:"store_password_file"`
		StateDir          string `toml:"state_dir"`
	} `toml:"exceptions"`
}

// TestKubernetesReplicas checks what lets several replicas of each
// front-end run as one: at least two of each, spread over nodes and
// zones, one exception register in PostgreSQL reached with a password and
// a CA read from Secrets, the same CSRF key on every replica, and egress
// to the database.
func TestKubernetesReplicas(t *testing.T) {
	m := loadManifests(t)
	if t.Failed() || len(m.configMaps) != 1 {
		t.FailNow()
	}
	cm := m.configMaps[0]
	secrets := map[string]corev1.Secret{}
	for _, s := range m.secrets {
		secrets[s.Name] = s
		for k, v := range s.StringData {
			if v != placeholder {
				t.Errorf("Secret %s key %s holds a value: only the placeholder %q belongs in a file", s.Name, k, placeholder)
			}
		}
		for k, v := range s.Data {
			if string(v) != placeholder {
				t.Errorf("Secret %s key %s holds a value: only the placeholder %q belongs in a file", s.Name, k, placeholder)
			}
		}
	}
	for k, text := range cm.Data {
		if bad := passwordLiterals(text); len(bad) > 0 {
			t.Errorf("ConfigMap key %s holds a password: %s", k, strings.Join(bad, "; "))
		}
	}

	csrfSecrets := map[string]bool{}
	for _, d := range m.deployments {
		if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
			t.Errorf("Deployment %s: want at least 2 replicas", d.Name)
		}
		if err := checkSpread(d); err != nil {
			t.Errorf("Deployment %s: %v", d.Name, err)
		}
		ps := d.Spec.Template.Spec
		c := ps.Containers[0]
		key := configKey(c.Args)
		var cfg registerConfig
		if _, err := toml.Decode(cm.Data[key], &cfg); err != nil {
			t.Fatalf("ConfigMap key %s: %v", key, err)
		}
		ex := cfg.Exceptions
		if ex == nil {
			t.Errorf("%s: no [exceptions]: each replica would hold no register", key)
			continue
		}
		u, err := url.Parse(ex.Store)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			t.Errorf("%s: exceptions.store %q is not a postgres:// URL: %d replicas would each keep their own register", key, ex.Store, *d.Spec.Replicas)
			continue
		}
		if got := u.Query().Get("sslmode"); got != "verify-full" {
			t.Errorf("%s: exceptions.store sslmode %q, want verify-full", key, got)
		}
		files := []struct{ what, path string }{
			{"exceptions.store_password_file", ex.StorePasswordFile},
			{"sslrootcert (the CA of verify-full)", u.Query().Get("sslrootcert")},
			{"<exceptions.state_dir>/csrf.key", path.Join(ex.StateDir, "csrf.key")},
		}
		for i, f := range files {
			if f.path == "" || f.path == "csrf.key" {
				t.Errorf("Deployment %s: %s is not set", d.Name, f.what)
				continue
			}
			secret, skey, err := secretFile(ps, c, f.path)
			if err != nil {
				t.Errorf("Deployment %s: %s %s: %v", d.Name, f.what, f.path, err)
				continue
			}
			if s, ok := secrets[secret]; !ok {
				t.Errorf("Deployment %s: %s comes from Secret %s, which secret.example.yaml does not describe", d.Name, f.what, secret)
			} else if _, ok := s.StringData[skey]; !ok {
				t.Errorf("Deployment %s: %s is key %s of Secret %s, which its template lacks", d.Name, f.what, skey, secret)
			}
			if i == 2 {
				csrfSecrets[secret+"/"+skey] = true
			}
		}

		// Egress to the database (and to a resolver for its name).
		host, port := u.Hostname(), u.Port()
		if port == "" {
			port = "5432"
		}
		for _, np := range m.networkPolicies {
			if !selects(np.Spec.PodSelector.MatchLabels, d.Spec.Template.Labels) {
				continue
			}
			if !egressAllows(np, port, corev1.ProtocolTCP) {
				t.Errorf("NetworkPolicy %s: %s cannot reach PostgreSQL on %s/TCP", np.Name, d.Name, port)
			}
			if net.ParseIP(host) == nil && !egressAllows(np, "53", corev1.ProtocolUDP) {
				t.Errorf("NetworkPolicy %s: %s cannot resolve %s (no egress to 53/UDP)", np.Name, d.Name, host)
			}
		}
	}
	if len(csrfSecrets) != 1 {
		t.Errorf("csrf.key comes from %v: want one Secret key shared by every replica (a form served by one pod is posted to another)", slices.Sorted(func(yield func(string) bool) {
			for k := range csrfSecrets {
				if !yield(k) {
					return
				}
			}
		}))
	}
}

// configKey is the ConfigMap key of `serve --config /etc/balise/KEY`.
func configKey(args []string) string {
	i := slices.Index(args, "--config")
	if i < 0 || i+1 >= len(args) {
		return ""
	}
	return path.Base(args[i+1])
}

// checkSpread requires the pods spread over nodes (maxSkew 1, enforced)
// and over zones.
func checkSpread(d appsv1.Deployment) error {
	var node, zone bool
	for _, tc := range d.Spec.Template.Spec.TopologySpreadConstraints {
		if tc.LabelSelector == nil || !selects(tc.LabelSelector.MatchLabels, d.Spec.Template.Labels) || tc.MaxSkew != 1 {
			continue
		}
		switch tc.TopologyKey {
		case "kubernetes.io/hostname":
			node = node || tc.WhenUnsatisfiable == corev1.DoNotSchedule
		case "topology.kubernetes.io/zone":
			zone = true
		}
	}
	switch {
	case !node:
		return errors.New("no topology spread constraint over kubernetes.io/hostname (maxSkew 1, DoNotSchedule) selecting its pods: two replicas could share a node")
	case !zone:
		return errors.New("no topology spread constraint over topology.kubernetes.io/zone selecting its pods")
	}
	return nil
}

// checkBudget reports whether a PodDisruptionBudget over replicas pods
// lets at least one be evicted (else a drain blocks forever) and never
// lets all of them go.
func checkBudget(spec policyv1.PodDisruptionBudgetSpec, replicas int) error {
	var kept int
	switch {
	case spec.MinAvailable != nil && spec.MaxUnavailable != nil:
		return errors.New("both minAvailable and maxUnavailable")
	case spec.MinAvailable != nil:
		n, err := intstr.GetScaledValueFromIntOrPercent(spec.MinAvailable, replicas, true)
		if err != nil {
			return err
		}
		kept = n
	case spec.MaxUnavailable != nil:
		n, err := intstr.GetScaledValueFromIntOrPercent(spec.MaxUnavailable, replicas, true)
		if err != nil {
			return err
		}
		kept = replicas - n
	default:
		return errors.New("neither minAvailable nor maxUnavailable")
	}
	switch {
	case kept < 1:
		return fmt.Errorf("lets a drain evict all %d replicas", replicas)
	case kept >= replicas:
		return fmt.Errorf("keeps all %d replicas: a drain could never evict one", replicas)
	}
	return nil
}

// secretFile names the Secret and key a container reads at file, through
// the deepest volume mount holding it.
func secretFile(ps corev1.PodSpec, c corev1.Container, file string) (secret, key string, err error) {
	file = path.Clean(file)
	var best *corev1.VolumeMount
	var rel string
	for i, vm := range c.VolumeMounts {
		mp := path.Clean(vm.MountPath)
		r, ok := "", false
		switch {
		case vm.SubPath != "":
			r, ok = vm.SubPath, mp == file
		case strings.HasPrefix(file, mp+"/"):
			r, ok = strings.TrimPrefix(file, mp+"/"), true
		}
		if ok && (best == nil || len(mp) > len(path.Clean(best.MountPath))) {
			best, rel = &c.VolumeMounts[i], r
		}
	}
	if best == nil {
		return "", "", errors.New("not on any volume mount")
	}
	i := slices.IndexFunc(ps.Volumes, func(v corev1.Volume) bool { return v.Name == best.Name })
	if i < 0 || ps.Volumes[i].Secret == nil {
		return "", "", fmt.Errorf("volume %s mounted at %s is not a Secret", best.Name, best.MountPath)
	}
	s := ps.Volumes[i].Secret
	if len(s.Items) == 0 {
		return s.SecretName, rel, nil
	}
	for _, it := range s.Items {
		if path.Clean(it.Path) == rel {
			return s.SecretName, it.Key, nil
		}
	}
	return "", "", fmt.Errorf("Secret volume %s has no item at %s", best.Name, rel)
}

// passwordLiterals lists the passwords a TOML config holds in clear: a
// key naming a password (other than a *_file path), or a URL with one.
func passwordLiterals(text string) []string {
	var doc map[string]any
	if _, err := toml.Decode(text, &doc); err != nil {
		return []string{err.Error()}
	}
	var bad []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				name := strings.TrimPrefix(prefix+"."+k, ".")
				if l := strings.ToLower(k); (strings.Contains(l, "password") || strings.Contains(l, "secret")) && !strings.HasSuffix(l, "_file") {
					bad = append(bad, name+" is a literal")
				}
				walk(name, x)
			}
		case []map[string]any:
			for i, x := range v {
				walk(fmt.Sprintf("%s[%d]", prefix, i), x)
			}
		case []any:
			for i, x := range v {
				walk(fmt.Sprintf("%s[%d]", prefix, i), x)
			}
		case string:
			if u, err := url.Parse(v); err == nil && u.Scheme != "" {
				if _, ok := u.User.Password(); ok || u.Query().Has("password") {
					bad = append(bad, prefix+" is a URL with a password")
				}
			}
		}
	}
	walk("", doc)
	slices.Sort(bad)
	return bad
}

// egressAllows reports whether some egress rule of np lets traffic out to
// port (a rule without ports allows every port).
func egressAllows(np networkingv1.NetworkPolicy, port string, proto corev1.Protocol) bool {
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		return true
	}
	for _, r := range np.Spec.Egress {
		if len(r.Ports) == 0 {
			return true
		}
		for _, p := range r.Ports {
			if p.Port != nil && p.Port.String() == port && (p.Protocol == nil && proto == corev1.ProtocolTCP || p.Protocol != nil && *p.Protocol == proto) {
				return true
			}
		}
	}
	return false
}

// TestReplicaChecksCatchMistakes proves the checks above fail on the
// mistakes they are for.
func TestReplicaChecksCatchMistakes(t *testing.T) {
	one, two, zero := intstr.FromInt32(1), intstr.FromInt32(2), intstr.FromInt32(0)
	all, half := intstr.FromString("100%"), intstr.FromString("50%")
	for _, tc := range []struct {
		spec     policyv1.PodDisruptionBudgetSpec
		replicas int
		ok       bool
	}{
		{policyv1.PodDisruptionBudgetSpec{MinAvailable: &one}, 2, true},
		{policyv1.PodDisruptionBudgetSpec{MaxUnavailable: &one}, 2, true},
		{policyv1.PodDisruptionBudgetSpec{MaxUnavailable: &one}, 3, true},
		{policyv1.PodDisruptionBudgetSpec{MaxUnavailable: &half}, 4, true},
		{policyv1.PodDisruptionBudgetSpec{MinAvailable: &zero}, 2, false},
		{policyv1.PodDisruptionBudgetSpec{MinAvailable: &two}, 2, false},
		{policyv1.PodDisruptionBudgetSpec{MinAvailable: &all}, 2, false},
		{policyv1.PodDisruptionBudgetSpec{MaxUnavailable: &two}, 2, false},
		{policyv1.PodDisruptionBudgetSpec{MaxUnavailable: &all}, 3, false},
		{policyv1.PodDisruptionBudgetSpec{MaxUnavailable: &zero}, 2, false},
		{policyv1.PodDisruptionBudgetSpec{}, 2, false},
	} {
		if err := checkBudget(tc.spec, tc.replicas); (err == nil) != tc.ok {
			t.Errorf("checkBudget(%+v, %d) = %v, want ok=%v", tc.spec, tc.replicas, err, tc.ok)
		}
	}

	for text, want := range map[string]int{
		"[exceptions]\nstore = \"postgres://balise:hunter2@db/balise\"\n":                       1,
		"[exceptions]\nstore = \"postgres://balise@db/balise?password=x\"\n":                    1,
		"[exceptions]\nstore_password = \"x\"\n":                                                1,
		"[[group]]\nname = \"a\"\n[group.ldap]\nbind_secret = \"x\"\n":                          1,
		"[exceptions]\nstore = \"postgres://balise@db/balise\"\nstore_password_file = \"/p\"\n": 0,
	} {
		if got := passwordLiterals(text); len(got) != want {
			t.Errorf("passwordLiterals(%q) = %q, want %d", text, got, want)
		}
	}

	labels := map[string]string{"app": "x"}
	d := appsv1.Deployment{}
	d.Spec.Template.Labels = labels
	if checkSpread(d) == nil {
		t.Error("checkSpread accepts a Deployment without spread constraints")
	}
	ps := corev1.PodSpec{
		Volumes: []corev1.Volume{
			{Name: "cm", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{}}},
			{Name: "s", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "pg",
				Items: []corev1.KeyToPath{{Key: "password", Path: "pw"}}}}},
		},
	}
	c := corev1.Container{VolumeMounts: []corev1.VolumeMount{{Name: "cm", MountPath: "/etc/balise"}, {Name: "s", MountPath: "/etc/balise/pg"}}}
	if s, k, err := secretFile(ps, c, "/etc/balise/pg/pw"); err != nil || s != "pg" || k != "password" {
		t.Errorf("secretFile(/etc/balise/pg/pw) = %s, %s, %v; want pg, password", s, k, err)
	}
	for _, f := range []string{"/etc/balise/pg/password", "/etc/balise/password", "/run/pw"} {
		if _, _, err := secretFile(ps, c, f); err == nil {
			t.Errorf("secretFile(%s) found a Secret", f)
		}
	}
}
