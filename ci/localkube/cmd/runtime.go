package main

import (
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// The sandbox ("pause") image: built from the tree's build/pause/linux/pause.c
// by ci/localkube/build.sh, shipped in the artifact's images/ and imported
// into containerd at every start.
const pauseImage = "localhost/localkube/pause:3.4"

func (n *node) containerdSocket() string {
	return filepath.Join(n.o.runDir, "containerd", "containerd.sock")
}

// containerdConfig writes containerd's configuration (root under the data
// directory, state and socket under the run directory) and the kubelet's,
// and returns the snapshotter chosen.
func (n *node) containerdConfig() (string, error) {
	o := n.o
	root := filepath.Join(o.dataDir, "containerd")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", err
	}
	snap := o.snapshotter
	if snap == "auto" {
		snap = "native"
		if err := overlaySupported(root); err == nil {
			snap = "overlayfs"
		} else {
			logf("containerd: overlayfs cannot be mounted in %s (%v): using the native snapshotter", root, err)
		}
	}
	cniConf := filepath.Join(o.dataDir, "localkube", "cni", "net.d")
	if err := os.MkdirAll(cniConf, 0o755); err != nil {
		return "", err
	}
	state := filepath.Join(o.runDir, "containerd")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.opt", "io.containerd.grpc.v1.introspection"]

[grpc]
  address = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # Machines without CAP_SYS_RESOURCE (these build machines, unprivileged
  # containers) cannot lower a process's oom_score_adj: without this every
  # sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = %q
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = %q
        SystemdCgroup = %t
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
`, root, state, n.containerdSocket(), pauseImage, snap, filepath.Join(n.root, "bin", "runc"), cgroupDriver() == "systemd", filepath.Join(n.root, "cni"), cniConf)
	if err := writeAtomic(filepath.Join(n.conf, "containerd.toml"), []byte(cfg), 0o600); err != nil {
		return "", err
	}
	if err := writeAtomic(filepath.Join(n.conf, "kubelet.yaml"), []byte(n.kubeletConfig()), 0o600); err != nil {
		return "", err
	}
	// Pods whose dnsPolicy is Default get the cluster DNS too: it forwards
	// what is not the cluster's to the machine's resolvers (a loopback
	// resolver such as 127.0.0.53 is not reachable from a pod).
	resolv := fmt.Sprintf("nameserver %s\noptions ndots:1\n", o.clusterDNS)
	if err := writeAtomic(filepath.Join(n.conf, "resolv.conf"), []byte(resolv), 0o644); err != nil {
		return "", err
	}
	logf("containerd: snapshotter %s, root %s; cgroup driver %s", snap, root, cgroupDriver())
	return snap, nil
}

// overlaySupported mounts a tiny overlay inside dir, as containerd's own
// check does: a data directory on overlay (a container's layer), eCryptfs
// or an old ZFS cannot hold overlay upper directories.
func overlaySupported(dir string) error {
	t, err := ioutil.TempDir(dir, ".overlay-check-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(t)
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(t, d), 0o700); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", filepath.Join(t, "lower"), filepath.Join(t, "upper"), filepath.Join(t, "work"))
	merged := filepath.Join(t, "merged")
	if err := syscall.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		return err
	}
	return syscall.Unmount(merged, 0)
}

// importImages imports every image archive in the directories into
// containerd's k8s.io namespace (where the kubelet's images live).
func (n *node) importImages(snap string, dirs []string) error {
	var failed []string
	for _, d := range dirs {
		for _, f := range archives(d) {
			if err := n.importArchive(snap, f); err != nil {
				failed = append(failed, err.Error())
			}
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("importing images: %s", strings.Join(failed, "; "))
	}
	return nil
}

// archives lists the image archives in a directory (hidden files, such as
// one being written, are not).
func archives(dir string) []string {
	entries, err := ioutil.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !e.Mode().IsRegular() {
			continue
		}
		for _, ext := range []string{".tar", ".tar.gz", ".tgz", ".tar.zst"} {
			if strings.HasSuffix(name, ext) {
				out = append(out, filepath.Join(dir, name))
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

func (n *node) importArchive(snap, file string) error {
	t := time.Now()
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	var in io.Reader = f
	var unzstd *exec.Cmd
	switch {
	case strings.HasSuffix(file, ".gz") || strings.HasSuffix(file, ".tgz"):
		gz, err := gzip.NewReader(f)
		if err != nil {
			return fmt.Errorf("%s: %v", file, err)
		}
		in = gz
	case strings.HasSuffix(file, ".zst"):
		unzstd = exec.Command("zstd", "-dc")
		unzstd.Stdin = f
		pipe, err := unzstd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := unzstd.Start(); err != nil {
			return fmt.Errorf("%s: zstd archives need the zstd program: %v", file, err)
		}
		in = pipe
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(n.root, "bin", "ctr"), "--address", n.containerdSocket(), "--namespace", "k8s.io",
		"images", "import", "--all-platforms", "--digests", "--snapshotter", snap, "-")
	cmd.Stdin = in
	cmd.Env = n.env
	out, err := cmd.CombinedOutput()
	if unzstd != nil {
		_ = unzstd.Wait()
	}
	if err != nil {
		return fmt.Errorf("%s: ctr images import: %v: %s", file, err, strings.TrimSpace(lastLines(string(out), 3)))
	}
	logf("imported %s in %v: %s", filepath.Base(file), time.Since(t).Round(time.Millisecond), strings.Join(strings.Fields(lastLines(string(out), 4)), " "))
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// watchImages imports an archive placed in the images directory while the
// node runs (`kubestrap image load`), as k3s does from v1.30.9.
func (n *node) watchImages(ctx context.Context) {
	if n.o.imagesDir == "" {
		return
	}
	type seen struct {
		size  int64
		mtime time.Time
	}
	known := map[string]seen{}
	snap := readSnapshotter(filepath.Join(n.conf, "containerd.toml"))
	first := true
	for {
		for _, f := range archives(n.o.imagesDir) {
			st, err := os.Stat(f)
			if err != nil {
				continue
			}
			s := seen{st.Size(), st.ModTime()}
			if old, ok := known[f]; ok && old == s {
				continue
			}
			known[f] = s
			if first {
				continue // imported at start
			}
			if err := n.importArchive(snap, f); err != nil {
				logf("warning: %v", err)
			}
		}
		first = false
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

func readSnapshotter(cfg string) string {
	raw, _ := readCapped(cfg, 1<<20)
	for _, l := range strings.Split(string(raw), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "snapshotter = ") {
			return strings.Trim(strings.TrimPrefix(l, "snapshotter = "), `"`)
		}
	}
	return "overlayfs"
}

// waitHTTPS polls url with a client certificate until it answers 200, a
// component ends, or the deadline passes.
func (n *node) waitHTTPS(ctx context.Context, what, url, cert string, within time.Duration) error {
	ca := n.o.caCert
	if strings.HasPrefix(cert, "etcd") {
		ca = n.o.etcdCACert
	}
	pair, err := tls.LoadX509KeyPair(n.file(cert+".crt"), n.file(cert+".key"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	raw, err := readCapped(ca, 1<<20)
	if err != nil {
		return err
	}
	pool.AppendCertsFromPEM(raw)
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool}}}
	t := time.Now()
	deadline := t.Add(within)
	last := "no answer yet"
	for time.Now().Before(deadline) {
		if why, bad := n.sup.failed(); bad {
			return fmt.Errorf("%s before %s was ready", why, what)
		}
		resp, err := client.Get(url)
		if err == nil {
			body, _ := ioutil.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == 200 {
				logf("%s ready in %v", what, time.Since(t).Round(time.Millisecond))
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, lastLines(string(body), 2))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped while waiting for %s", what)
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s was not ready after %v (last answer: %s)", what, within, last)
}

func (n *node) waitSocket(ctx context.Context, what, path string, within time.Duration) error {
	t := time.Now()
	for time.Since(t) < within {
		if why, bad := n.sup.failed(); bad {
			return fmt.Errorf("%s before %s was ready", why, what)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			logf("%s ready in %v", what, time.Since(t).Round(time.Millisecond))
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped while waiting for %s", what)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not open %s within %v", what, path, within)
}

func (n *node) client() (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(n.conf, "localkube.kubeconfig"))
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 10 * time.Second
	return kubernetes.NewForConfig(cfg)
}

// bootstrapObjects makes what the cluster DNS needs: read access for its
// user, and the kube-dns Service at its fixed ClusterIP whose Endpoints lead
// to the DNS server on the node address.
func (n *node) bootstrapObjects(ctx context.Context) error {
	c, err := n.client()
	if err != nil {
		return err
	}
	o := n.o
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "localkube:dns"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:kube-dns"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "localkube:dns"}},
	}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("the DNS server's role binding: %v", err)
	}
	labels := map[string]string{"k8s-app": "kube-dns", "kubernetes.io/name": "KubeDNS", "kubernetes.io/cluster-service": "true"}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system", Labels: labels},
		Spec: corev1.ServiceSpec{
			ClusterIP: o.clusterDNS,
			Ports: []corev1.ServicePort{
				{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt(o.dnsPort)},
				{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt(o.dnsPort)},
			},
		},
	}
	// Asked first: a second create fails on its ClusterIP, not its name.
	if _, err := c.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{}); apierrors.IsNotFound(err) {
		if _, err := c.CoreV1().Services("kube-system").Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("the kube-dns Service: %v", err)
		}
	} else if err != nil {
		return fmt.Errorf("the kube-dns Service: %v", err)
	}
	ep := &corev1.Endpoints{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system", Labels: labels},
		Subsets: []corev1.EndpointSubset{{
			Addresses: []corev1.EndpointAddress{{IP: o.nodeIP, NodeName: &o.nodeName}},
			Ports: []corev1.EndpointPort{
				{Name: "dns", Port: int32(o.dnsPort), Protocol: corev1.ProtocolUDP},
				{Name: "dns-tcp", Port: int32(o.dnsPort), Protocol: corev1.ProtocolTCP},
			},
		}},
	}
	if old, err := c.CoreV1().Endpoints("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{}); err == nil {
		ep.ResourceVersion = old.ResourceVersion
		_, err = c.CoreV1().Endpoints("kube-system").Update(ctx, ep, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("the kube-dns Endpoints: %v", err)
		}
	} else if _, err := c.CoreV1().Endpoints("kube-system").Create(ctx, ep, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("the kube-dns Endpoints: %v", err)
	}
	return nil
}

// podNetwork waits for the node's pod CIDR (the controller-manager's node
// IPAM allocates it once the kubelet registers the node) and writes the
// bridge CNI configuration for it: the kubelet reports the node Ready once
// the configuration is there. The firewall plugin accepts each pod's
// forwarded traffic in the filter table's FORWARD chain (CNI-FORWARD): a
// machine running Docker has FORWARD's policy at DROP, which would drop
// pod-to-pod traffic through a Service (and across the bridge).
func (n *node) podNetwork(ctx context.Context) error {
	c, err := n.client()
	if err != nil {
		return err
	}
	o := n.o
	t := time.Now()
	cidr := ""
	for cidr == "" {
		if why, bad := n.sup.failed(); bad {
			return fmt.Errorf("%s before the node had a pod network", why)
		}
		if time.Since(t) > 120*time.Second {
			return fmt.Errorf("node %s got no pod CIDR within 120s (is kube-controller-manager running? see its log under %s)", o.nodeName, n.logs)
		}
		if nd, err := c.CoreV1().Nodes().Get(ctx, o.nodeName, metav1.GetOptions{}); err == nil {
			cidr = nd.Spec.PodCIDR
		}
		if cidr == "" {
			select {
			case <-ctx.Done():
				return fmt.Errorf("stopped while waiting for the node's pod CIDR")
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	conf := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "localkube",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall"}
  ]
}
`, cidr, filepath.Join(o.dataDir, "localkube", "cni", "ipam"))
	dir := filepath.Join(o.dataDir, "localkube", "cni", "net.d")
	if err := writeAtomic(filepath.Join(dir, "10-localkube.conflist"), []byte(conf), 0o644); err != nil {
		return err
	}
	// Service traffic from a pod to a pod on the same bridge must pass
	// iptables (kube-proxy's DNAT): bridged frames do only with br_netfilter.
	const nf = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	if v, err := ioutil.ReadFile(nf); err == nil && strings.TrimSpace(string(v)) != "1" {
		if err := ioutil.WriteFile(nf, []byte("1"), 0o644); err != nil {
			logf("warning: %s is 0 and could not be set (%v): a pod reaching a Service backed by a pod on the same node may get no answer", nf, err)
		}
	} else if err != nil {
		logf("warning: %s is missing (no br_netfilter module): a pod reaching a Service backed by a pod on the same node may get no answer", nf)
	}
	logf("pod network: %s on cni0 (%v after the kubelet started)", cidr, time.Since(t).Round(time.Millisecond))
	return nil
}
